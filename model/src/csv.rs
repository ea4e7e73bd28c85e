//! A small RFC 4180 reader and writer: comma-separated, double-quoted fields with
//! `""` as an escaped quote, `\n` or `\r\n` line ends. Enough for partner data files
//! without pulling in a CSV dependency.

use std::io::Read;

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

/// Why [`read`] stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The input could not be read, or is not UTF-8 (as `read_to_string` reports it).
    /// Reported before any syntax error, wherever in the input either is.
    Io(std::io::Error),
    /// The input is not well-formed CSV.
    Syntax(SyntaxError),
}

/// One record as [`read`] passes it on: its 1-based line and its fields, borrowed
/// from buffers that the next record reuses.
pub(crate) struct RecordRef<'a> {
    pub(crate) line: usize,
    text: &'a str,
    ends: &'a [usize],
}

impl<'a> RecordRef<'a> {
    /// Number of fields.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Field `i` (empty past the last field).
    pub(crate) fn field(&self, i: usize) -> &'a str {
        let start = match i {
            0 => 0,
            _ => self.ends.get(i - 1).copied().unwrap_or(usize::MAX),
        };
        let end = self.ends.get(i).copied().unwrap_or(0);
        // Fields end at ASCII separators, so these are char boundaries.
        self.text.get(start..end).unwrap_or_default()
    }

    /// The fields, in order.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).map(|i| self.field(i))
    }
}

/// Where the reader is between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside quotes.
    Plain,
    /// Outside quotes, after a `\r` whose meaning depends on the next byte.
    PlainCr,
    /// Inside a quoted field.
    Quoted,
    /// Inside a quoted field, after a `"` that closes it or starts an escaped `""`.
    QuotedQuote,
}

/// The byte-level CSV state machine behind [`read`]: the grammar [`parse`] documents,
/// fed a chunk at a time, handing each record to a callback as it ends.
struct Machine {
    state: State,
    line: usize,
    record_line: usize,
    record_started: bool,
    /// The current record's fields, back to back; `ends` marks where each ends.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Start of the current field in `bytes`.
    field_start: usize,
}

impl Machine {
    fn new() -> Self {
        Machine {
            state: State::Plain,
            line: 1,
            record_line: 1,
            record_started: false,
            bytes: Vec::new(),
            ends: Vec::new(),
            field_start: 0,
        }
    }

    fn field_is_empty(&self) -> bool {
        self.bytes.len() == self.field_start
    }

    fn end_field(&mut self) {
        self.ends.push(self.bytes.len());
        self.field_start = self.bytes.len();
    }

    fn emit(&mut self, on_record: &mut dyn FnMut(RecordRef<'_>)) -> Result<(), ReadError> {
        self.end_field();
        let text = std::str::from_utf8(&self.bytes).map_err(|_| ReadError::Io(not_utf8()))?;
        on_record(RecordRef {
            line: self.record_line,
            text,
            ends: &self.ends,
        });
        self.bytes.clear();
        self.ends.clear();
        self.field_start = 0;
        Ok(())
    }

    /// One byte outside quotes.
    fn plain(&mut self, b: u8, on_record: &mut dyn FnMut(RecordRef<'_>)) -> Result<(), ReadError> {
        match b {
            b'"' if self.field_is_empty() => {
                self.record_started = true;
                self.state = State::Quoted;
            }
            b',' => {
                self.record_started = true;
                self.end_field();
            }
            b'\r' => self.state = State::PlainCr,
            b'\n' => {
                if self.record_started || !self.field_is_empty() {
                    self.emit(on_record)?;
                }
                self.record_started = false;
                self.line += 1;
                self.record_line = self.line;
            }
            other => {
                self.record_started = true;
                self.bytes.push(other);
            }
        }
        Ok(())
    }

    fn feed(
        &mut self,
        chunk: &[u8],
        on_record: &mut dyn FnMut(RecordRef<'_>),
    ) -> Result<(), ReadError> {
        for &b in chunk {
            match self.state {
                State::Plain => self.plain(b, on_record)?,
                State::PlainCr => {
                    self.state = State::Plain;
                    if b != b'\n' {
                        // A lone `\r` is field text.
                        self.record_started = true;
                        self.bytes.push(b'\r');
                    }
                    self.plain(b, on_record)?;
                }
                State::Quoted => match b {
                    b'"' => self.state = State::QuotedQuote,
                    b'\n' => {
                        self.line += 1;
                        self.bytes.push(b);
                    }
                    other => self.bytes.push(other),
                },
                State::QuotedQuote => {
                    if b == b'"' {
                        self.bytes.push(b'"');
                        self.state = State::Quoted;
                    } else if matches!(b, b',' | b'\n' | b'\r') {
                        self.state = State::Plain;
                        self.plain(b, on_record)?;
                    } else {
                        return Err(ReadError::Syntax(SyntaxError {
                            line: self.line,
                            message: "text follows the closing quote of a quoted field",
                        }));
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, on_record: &mut dyn FnMut(RecordRef<'_>)) -> Result<(), ReadError> {
        match self.state {
            State::Quoted => {
                return Err(ReadError::Syntax(SyntaxError {
                    line: self.record_line,
                    message: "a quoted field is never closed",
                }));
            }
            State::PlainCr => {
                self.record_started = true;
                self.bytes.push(b'\r');
            }
            State::Plain | State::QuotedQuote => {}
        }
        self.state = State::Plain;
        if self.record_started || !self.field_is_empty() {
            self.emit(on_record)?;
        }
        Ok(())
    }
}

/// The error `read_to_string` gives for input that is not UTF-8.
fn not_utf8() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "stream did not contain valid UTF-8",
    )
}

/// Size of the chunks [`read`] reads.
const CHUNK: usize = 64 * 1024;

/// Reads CSV from `input` a chunk at a time and hands each record to `on_record` as
/// it ends, keeping only the current record in memory; the grammar is [`parse`]'s.
///
/// Errors come in the order reading the whole input into a string and then parsing
/// it would give them: an I/O error or input that is not UTF-8, anywhere, comes
/// first; then the first syntax error. Records before a syntax error have already
/// been handed on when it is found; after it the rest of the input is only checked
/// to be readable UTF-8.
pub(crate) fn read(
    mut input: impl Read,
    mut on_record: impl FnMut(RecordRef<'_>),
) -> Result<(), ReadError> {
    let on_record: &mut dyn FnMut(RecordRef<'_>) = &mut on_record;
    let mut machine = Machine::new();
    let mut syntax: Option<SyntaxError> = None;
    let mut buf = vec![0u8; CHUNK];
    // Bytes of a UTF-8 sequence cut by the end of the previous chunk.
    let mut carry = 0usize;
    let mut first = true;
    loop {
        let n = match input.read(&mut buf[carry..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        let filled = carry + n;
        let valid = match std::str::from_utf8(&buf[..filled]) {
            Ok(_) => filled,
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return Err(ReadError::Io(not_utf8())),
        };
        let mut chunk = &buf[..valid];
        // A byte-order mark is one whole character, never cut: the first non-empty
        // chunk holds all of it or none.
        if first && !chunk.is_empty() {
            first = false;
            chunk = chunk.strip_prefix("\u{feff}".as_bytes()).unwrap_or(chunk);
        }
        if syntax.is_none()
            && let Err(e) = machine.feed(chunk, on_record)
        {
            match e {
                ReadError::Syntax(e) => syntax = Some(e),
                io => return Err(io),
            }
        }
        buf.copy_within(valid..filled, 0);
        carry = filled - valid;
    }
    if carry > 0 {
        return Err(ReadError::Io(not_utf8()));
    }
    if let Some(e) = syntax {
        return Err(ReadError::Syntax(e));
    }
    machine.finish(on_record)
}

/// Splits `text` into records. Blank lines are skipped; a leading UTF-8 byte-order
/// mark is ignored.
pub(crate) fn parse(text: &str) -> Result<Vec<Record>, SyntaxError> {
    let mut records = Vec::new();
    let result = read(text.as_bytes(), |r| {
        records.push(Record {
            line: r.line,
            fields: r.fields().map(str::to_owned).collect(),
        })
    });
    match result {
        Ok(()) => Ok(records),
        Err(ReadError::Syntax(e)) => Err(e),
        // A &str is UTF-8 and reading a slice cannot fail.
        Err(ReadError::Io(_)) => Ok(records),
    }
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

    /// The whole-string parser `read` replaced, kept as the reference it must agree
    /// with.
    fn reference(text: &str) -> Result<Vec<Record>, SyntaxError> {
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

    /// A reader that returns at most `step` bytes a call, to cut chunks anywhere:
    /// inside UTF-8 sequences, between `\r` and `\n`, between two quotes.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    fn read_all(bytes: &[u8], step: usize) -> Result<Vec<Record>, ReadError> {
        let mut records = Vec::new();
        read(Trickle { bytes, step }, |r| {
            records.push(Record {
                line: r.line,
                fields: r.fields().map(str::to_owned).collect(),
            })
        })?;
        Ok(records)
    }

    #[test]
    fn streaming_reader_agrees_with_the_whole_string_parser() {
        // Seeded inputs from the characters the grammar cares about, each read whole
        // and in chunks of 1, 2, 3 and 7 bytes.
        let alphabet = [
            "a", "1", " ", ",", ",", "\"", "\"", "\"\"", "\n", "\n", "\r", "\r\n", "é", "€", "𝄞",
            "\u{feff}",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut syntax_errors = 0;
        for case in 0..3000 {
            let len = (next() % 40) as usize;
            let mut text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if case % 5 == 0 {
                text.insert(0, '\u{feff}');
            }
            let expected = reference(&text);
            syntax_errors += usize::from(expected.is_err());
            for step in [usize::MAX, 1, 2, 3, 7] {
                let got = match read_all(text.as_bytes(), step) {
                    Ok(records) => Ok(records),
                    Err(ReadError::Syntax(e)) => Err(e),
                    Err(ReadError::Io(e)) => panic!("{text:?}: {e}"),
                };
                assert_eq!(got, expected, "{text:?} in chunks of {step}");
            }
        }
        // Both outcomes were exercised.
        assert!((300..2700).contains(&syntax_errors), "{syntax_errors}");
    }

    #[test]
    fn input_that_is_not_utf8_is_reported_first_as_read_to_string_would() {
        let expected = std::io::read_to_string(&b"a,\xff\n"[..]).unwrap_err();
        // After a syntax error, after valid records, and cut off at the very end.
        for bytes in [
            &b"a,b\n\"x\"y,1\n\xff\n"[..],
            &b"a,b\n1,2\n3,\xe2\x82"[..],
            &b"\xef\xbb"[..],
        ] {
            for step in [usize::MAX, 1, 2] {
                match read_all(bytes, step) {
                    Err(ReadError::Io(e)) => {
                        assert_eq!(e.to_string(), expected.to_string());
                        assert_eq!(e.kind(), expected.kind());
                    }
                    other => panic!("{bytes:?}: {:?}", other.map(|r| r.len())),
                }
            }
        }
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
