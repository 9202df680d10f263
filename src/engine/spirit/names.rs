//! The names Spirit gives what it leaves in a schema, as Spirit computes them: the inspection
//! after a restart and a cancel must look for exactly these.
//!
//! - Auxiliary tables (`pkg/utils/tablename.go`, v0.13+): `_<t>_new`, `_<t>_old`, `_<t>_chkpnt`,
//!   the table name cut to a plain byte prefix so the whole fits MySQL's 64 characters (59
//!   characters of `<t>` kept for `_new`/`_old`, 56 for `_chkpnt`; no hash). A statement that
//!   alters several tables keeps one checkpoint, `_spirit_checkpoint` (`pkg/migration/runner.go`).
//! - The advisory lock a runner holds while it works (`pkg/dbconn/advisorylock.go`, v0.16+):
//!   `GET_LOCK(name, 0)` with name `<schema[:20]>.<prefix[:32]>-<sha1(schema + prefix)[:8]>`,
//!   where `prefix` is the table name cut as for `_chkpnt`; a statement over several tables also
//!   holds `<schema[:20]>.atomic-multi-table-<sha1(schema + "\0spirit-atomic-multi-table")[:8]>`.

use sha1::{Digest, Sha1};

const MAX_TABLE_NAME: usize = 64;
pub const MULTI_TABLE_CHECKPOINT: &str = "_spirit_checkpoint";

/// A byte prefix of at most `max` bytes that ends on a character boundary. Spirit cuts plain
/// bytes; the two agree on every name whose cut does not fall inside a multi-byte character
/// (ASCII names always). Where it would, Spirit's own name is not valid text, and a lock or
/// table named from it cannot be matched here.
fn prefix(name: &str, max: usize) -> &str {
    if name.len() <= max {
        return name;
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn aux(table: &str, suffix: &str) -> String {
    format!(
        "_{}{suffix}",
        prefix(table, MAX_TABLE_NAME - 1 - suffix.len())
    )
}

pub fn new_table(table: &str) -> String {
    aux(table, "_new")
}

pub fn old_table(table: &str) -> String {
    aux(table, "_old")
}

/// The checkpoint of a statement over `tables` (one table's own, or the shared one).
pub fn checkpoint_table(tables: &[String]) -> String {
    match tables {
        [one] => aux(one, "_chkpnt"),
        _ => MULTI_TABLE_CHECKPOINT.to_string(),
    }
}

fn sha1_prefix(text: &[u8]) -> String {
    let digest = Sha1::digest(text);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The advisory lock Spirit holds on `table` while it migrates it.
pub fn table_lock(schema: &str, table: &str) -> String {
    let aux_prefix = prefix(table, MAX_TABLE_NAME - 1 - "_chkpnt".len());
    let hash = sha1_prefix(format!("{schema}{aux_prefix}").as_bytes());
    format!("{}.{}-{hash}", prefix(schema, 20), prefix(aux_prefix, 32))
}

/// The schema-wide lock of a statement over several tables.
pub fn multi_table_lock(schema: &str) -> String {
    let hash = sha1_prefix(format!("{schema}\0spirit-atomic-multi-table").as_bytes());
    format!("{}.atomic-multi-table-{hash}", prefix(schema, 20))
}

/// Every lock a runner of a statement over `tables` holds.
pub fn locks(schema: &str, tables: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tables.iter().map(|t| table_lock(schema, t)).collect();
    if tables.len() > 1 {
        out.push(multi_table_lock(schema));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_spirits_plain_ones() {
        assert_eq!(new_table("items"), "_items_new");
        assert_eq!(old_table("items"), "_items_old");
        assert_eq!(checkpoint_table(&["items".into()]), "_items_chkpnt");
        assert_eq!(
            checkpoint_table(&["a".into(), "b".into()]),
            "_spirit_checkpoint"
        );
    }

    #[test]
    fn long_names_are_cut_to_fit_64_characters() {
        let t = "t".repeat(64);
        assert_eq!(new_table(&t), format!("_{}_new", "t".repeat(59)));
        assert_eq!(
            checkpoint_table(std::slice::from_ref(&t)),
            format!("_{}_chkpnt", "t".repeat(56))
        );
        assert_eq!(checkpoint_table(std::slice::from_ref(&t)).len(), 64);
        // A cut never splits a character.
        let wide = "é".repeat(40);
        assert!(new_table(&wide).len() <= 64);
    }

    #[test]
    fn lock_names_match_spirits_format() {
        // sha1("testt1") = 23037d07…, sha1("shopitems") = da3244af….
        assert_eq!(table_lock("test", "t1"), "test.t1-23037d07");
        assert_eq!(table_lock("shop", "items"), "shop.items-da3244af");
        let long_schema = "s".repeat(30);
        let long_table = "t".repeat(64);
        let name = table_lock(&long_schema, &long_table);
        assert!(name.starts_with(&format!("{}.{}-", "s".repeat(20), "t".repeat(32))));
        assert!(name.len() <= 62);
        assert!(multi_table_lock("shop").starts_with("shop.atomic-multi-table-"));
        assert_eq!(locks("shop", &["a".into(), "b".into()]).len(), 3);
    }
}
