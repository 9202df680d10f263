//! Spirit's `--conf` file as Spirit reads it: go-ini v1.67 with no load options
//! (`pkg/migration/conf_params.go`), only the `[client]` section, keys `host`, `port`, `user`,
//! `password`, `database`. The reading below follows go-ini's `parser.go` (`readValue`) on
//! every point applyd's quoting relies on, so a value go-ini would cut short is cut short here.

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Conf {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Option<String>,
    /// An unparsable port reads as none (Spirit's `MustInt` gives 0, then the default 3306).
    pub port: Option<u16>,
    pub database: Option<String>,
}

/// One value after its key's delimiter, as go-ini reads it with default options; `rest` is what
/// follows on later lines (for continuations).
fn read_value<'a>(raw: &str, rest: &mut impl Iterator<Item = &'a str>) -> Result<String, String> {
    let line = raw.trim_start();
    if line.is_empty() {
        return Ok(String::new());
    }
    // Triple double quotes or a backtick: verbatim up to the line's last closing quote
    // (go-ini reads on across lines when there is none; applyd never writes that).
    for quote in ["\"\"\"", "`"] {
        if line.starts_with(quote) && (quote != "\"\"\"" || line.len() > 3) {
            let body = &line[quote.len()..];
            return match body.rfind(quote) {
                Some(end) => Ok(body[..end].to_string()),
                None => Err(format!("unterminated {quote} quote")),
            };
        }
    }
    let mut line = line.trim_end().to_string();
    // A trailing backslash continues the value on the next line.
    if let Some(head) = line.strip_suffix('\\') {
        let mut value = head.to_string();
        for next in rest.by_ref() {
            let next = next.trim();
            match next.strip_suffix('\\') {
                Some(more) => value.push_str(more),
                None => {
                    value.push_str(next);
                    break;
                }
            }
        }
        return Ok(value);
    }
    // An inline comment starts at any `#` or `;`, even inside quotes.
    if let Some(i) = line.find(['#', ';']) {
        line.truncate(i);
    }
    let line = line.trim_end();
    // Surrounding quotes, checked only after the comment was cut, and only when the quote
    // does not also appear inside (go-ini's `hasSurroundedQuote`).
    for q in ['"', '\''] {
        if line.len() >= 2
            && line.starts_with(q)
            && line.ends_with(q)
            && !line[1..line.len() - 1].contains(q)
        {
            return Ok(line[1..line.len() - 1].to_string());
        }
    }
    Ok(line.to_string())
}

pub fn parse(text: &str) -> Result<Conf, String> {
    let mut conf = Conf::default();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(raw) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            // Up to the last `]`, untrimmed: `[ client ]` is not `client`.
            let end = name.rfind(']').ok_or("unclosed section header")?;
            section = name[..end].to_string();
            continue;
        }
        // Keys end at the first `=` or `:`; a line without one is an error anywhere in the
        // file (AllowBooleanKeys is off), even outside `[client]`.
        let Some(at) = line.find(['=', ':']) else {
            return Err(format!("key-value delimiter not found: {line}"));
        };
        let key = line[..at].trim();
        let value = read_value(&line[at + 1..], &mut lines)?;
        if section != "client" {
            continue;
        }
        // An empty user, host or database (or port 0) falls back to Spirit's default; an empty
        // password is honoured (`conf_params.go`: `GetUser`, `GetHost`, `GetPort`).
        let non_empty = |v: String| Some(v).filter(|v| !v.is_empty());
        match key {
            "user" => conf.user = non_empty(value),
            "password" => conf.password = Some(value),
            "host" => conf.host = non_empty(value),
            "port" => conf.port = value.parse().ok().filter(|p| *p != 0),
            "database" => conf.database = non_empty(value),
            _ => {}
        }
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Option<String> {
        parse(&format!("[client]\n{text}\n")).unwrap().password
    }

    #[test]
    fn unquoted_values_end_at_a_comment() {
        assert_eq!(password("password=ab#cd").as_deref(), Some("ab"));
        assert_eq!(password("password=ab;cd").as_deref(), Some("ab"));
        assert_eq!(password("password = plain ").as_deref(), Some("plain"));
    }

    #[test]
    fn double_quotes_do_not_protect_a_comment() {
        assert_eq!(password(r#"password="ab#cd""#).as_deref(), Some("\"ab"));
        assert_eq!(password(r#"password="abcd""#).as_deref(), Some("abcd"));
        assert_eq!(password("password='abcd'").as_deref(), Some("abcd"));
        assert_eq!(password("password='it's'").as_deref(), Some("'it's'"));
    }

    #[test]
    fn backticks_and_triple_quotes_keep_everything() {
        assert_eq!(
            password("password=`a#b;c\"d'e\\`").as_deref(),
            Some("a#b;c\"d'e\\")
        );
        assert_eq!(password("password=\"\"\"a#b\"\"\"").as_deref(), Some("a#b"));
        assert_eq!(password("password=``").as_deref(), Some(""));
    }

    #[test]
    fn a_trailing_backslash_continues_the_line() {
        let c = parse("[client]\npassword=ab\\\ncd\nuser=u\n").unwrap();
        assert_eq!(c.password.as_deref(), Some("abcd"));
        assert_eq!(c.user.as_deref(), Some("u"));
    }

    #[test]
    fn only_the_client_section_counts_and_a_bare_key_is_an_error() {
        let c = parse("[mysqld]\npassword=x\n[client]\nuser=u\nport=oops\n").unwrap();
        assert_eq!(c.password, None);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(c.port, None);
        assert!(parse("[mysqld]\nskip-ssl\n[client]\nuser=u\n").is_err());
        assert_eq!(parse("[ client ]\nuser=u\n").unwrap().user, None);
        assert_eq!(parse("[client]\nuser=\nport=0\n").unwrap(), Conf::default());
    }
}
