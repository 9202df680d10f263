//! The names Spirit uses, stated here from Spirit's source on their own (not borrowed from
//! the adapter, whose inspection they must match): `pkg/utils/tablename.go` (auxiliary tables,
//! v0.13+), `pkg/migration/runner.go` (`_spirit_checkpoint`), `pkg/dbconn/advisorylock.go`
//! (lock names, v0.16+).

use sha1::{Digest, Sha1};

/// The longest prefix of `s` of at most `n` bytes (on a character boundary).
fn cut(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `_<t>` + suffix, `<t>` cut so the name is at most 64 bytes.
pub fn aux(table: &str, suffix: &str) -> String {
    format!("_{}{suffix}", cut(table, 64 - 1 - suffix.len()))
}

pub fn checkpoint(tables: &[String]) -> String {
    if tables.len() == 1 {
        aux(&tables[0], "_chkpnt")
    } else {
        "_spirit_checkpoint".into()
    }
}

fn hash8(s: &str) -> String {
    Sha1::digest(s.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn table_lock(schema: &str, table: &str) -> String {
    let p = cut(table, 56);
    format!(
        "{}.{}-{}",
        cut(schema, 20),
        cut(p, 32),
        hash8(&format!("{schema}{p}"))
    )
}

pub fn multi_table_lock(schema: &str) -> String {
    format!(
        "{}.atomic-multi-table-{}",
        cut(schema, 20),
        hash8(&format!("{schema}\0spirit-atomic-multi-table"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_spirit_makes_them() {
        assert_eq!(aux("items", "_new"), "_items_new");
        assert_eq!(aux(&"x".repeat(70), "_chkpnt").len(), 64);
        assert_eq!(table_lock("shop", "items"), "shop.items-da3244af");
        assert_eq!(multi_table_lock("shop"), "shop.atomic-multi-table-e38e1008");
    }
}
