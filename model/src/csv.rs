//! A small RFC 4180 reader and writer: comma-separated, double-quoted fields with
//! `""` as an escaped quote, `\n` or `\r\n` line ends. Enough for partner data files
//! without pulling in a CSV dependency.

/// One record and the 1-based line of the file it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) line: usize,
    pub(crate) fields: Vec<String>,
}

/// A syntax error, with the 1-based line where it was detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) message: &'static str,
}

/// Splits `text` into records. Blank lines are skipped; a leading UTF-8 byte-order
/// mark is ignored.
pub(crate) fn parse(text: &str) -> Result<Vec<Record>, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut record_line = 1usize;
    let mut record_started = false;

    while let Some(c) = chars.next() {
        match c {
            '"' if field.is_empty() => {
                record_started = true;
                // Quoted field: read up to the closing quote.
                loop {
                    match chars.next() {
                        None => {
                            return Err(SyntaxError {
                                line: record_line,
                                message: "a quoted field is never closed",
                            });
                        }
                        Some('"') => {
                            if chars.peek() == Some(&'"') {
                                chars.next();
                                field.push('"');
                            } else {
                                break;
                            }
                        }
                        Some('\n') => {
                            line += 1;
                            field.push('\n');
                        }
                        Some(other) => field.push(other),
                    }
                }
                match chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => {}
                    Some(_) => {
                        return Err(SyntaxError {
                            line,
                            message: "text follows the closing quote of a quoted field",
                        });
                    }
                }
            }
            ',' => {
                record_started = true;
                fields.push(std::mem::take(&mut field));
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if record_started || !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                    records.push(Record {
                        line: record_line,
                        fields: std::mem::take(&mut fields),
                    });
                }
                record_started = false;
                line += 1;
                record_line = line;
            }
            other => {
                record_started = true;
                field.push(other);
            }
        }
    }
    if record_started || !field.is_empty() {
        fields.push(field);
        records.push(Record {
            line: record_line,
            fields,
        });
    }
    Ok(records)
}

/// Appends one record to `out`, quoting fields that need it, and a `\n`.
pub(crate) fn write_record<S: AsRef<str>>(out: &mut String, fields: &[S]) {
    if let [only] = fields
        && only.as_ref().is_empty()
    {
        // A lone empty field would otherwise read back as a blank line.
        out.push_str("\"\"\n");
        return;
    }
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let field = field.as_ref();
        if field.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(records: &[Record]) -> Vec<Vec<&str>> {
        records
            .iter()
            .map(|r| r.fields.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn plain_records_with_crlf_and_blank_lines() {
        let records = parse("a,b\r\n1,2\n\n3,\n").unwrap();
        assert_eq!(
            fields(&records),
            vec![vec!["a", "b"], vec!["1", "2"], vec!["3", ""]]
        );
        assert_eq!(
            records.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 2, 4]
        );
    }

    #[test]
    fn quoted_fields_escapes_and_newlines() {
        let records = parse("\u{feff}x,y\n\"a, \"\"b\"\"\",\"l1\nl2\"\nlast,1").unwrap();
        assert_eq!(
            fields(&records),
            vec![
                vec!["x", "y"],
                vec!["a, \"b\"", "l1\nl2"],
                vec!["last", "1"]
            ]
        );
        assert_eq!(records[2].line, 4);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert_eq!(parse("a\n\"open").unwrap_err().line, 2);
        assert_eq!(parse("a\n\"x\"y,1\n").unwrap_err().line, 2);
    }

    #[test]
    fn writer_round_trips() {
        let rows = vec![
            vec!["plain", "with,comma", "with \"quote\"", "multi\nline", ""],
            vec!["1", "2", "3", "4", "5"],
        ];
        let mut out = String::new();
        for row in &rows {
            write_record(&mut out, row);
        }
        assert_eq!(fields(&parse(&out).unwrap()), rows);
    }
}
