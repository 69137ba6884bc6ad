//! `pushgate push --ndjson`: reading batches of pushes, one JSON object a
//! line, with bounded memory.

use super::ClientError;
use std::io::{self, BufRead, Read};

/// One `--ndjson` line: `{"users":["a","b"],"data":<any JSON>}`. Unknown
/// keys are refused so a typo (`"user"`) is reported, not silently ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PushLine {
    users: Vec<String>,
    /// The data's text as written, only checked to be JSON: rebuilding it
    /// from a `Value` would round big integers and rewrite floats (`1.10`
    /// → `1.1`), and devices are promised the payload as sent.
    data: Box<serde_json::value::RawValue>,
}

/// Parses one `--ndjson` line into `(users, data)`, the data byte for byte
/// as written on the line (without the whitespace around it); `None` for a
/// blank line. The error says what is wrong, not where: the caller knows
/// the line number.
pub fn parse_push_line(line: &str) -> Result<Option<(Vec<String>, String)>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let parsed: PushLine = serde_json::from_str(line)
        .map_err(|e| format!("{e}; expected {{\"users\":[\"USER\",…],\"data\":<any JSON>}}"))?;
    if parsed.users.is_empty() {
        return Err(
            "\"users\" is empty; name at least one user (`pushgate push --all` reaches everyone)"
                .to_owned(),
        );
    }
    let data = Box::<str>::from(parsed.data).into_string();
    Ok(Some((parsed.users, data)))
}

/// The pushes in an NDJSON stream, one per non-blank line, for
/// [`Client::push_many`]. Reading stops at the first bad line; the error is
/// kept in [`NdjsonPushes::error`], since `push_many` takes plain items and
/// the lines before it have already been sent by then.
pub struct NdjsonPushes<R> {
    reader: R,
    line_bytes_max: usize,
    line: String,
    line_number: u64,
    /// Pushes handed out so far.
    pub items: u64,
    /// Why reading stopped early, naming the line; `None` at a clean end.
    pub error: Option<ClientError>,
    /// Set at the end or the first bad line: nothing is read after either.
    done: bool,
}

impl<R: BufRead> NdjsonPushes<R> {
    /// Reads `reader`, refusing a line longer than `line_bytes_max` (see
    /// [`ndjson_line_bytes_max`]) so one missing newline cannot fill memory.
    pub fn new(reader: R, line_bytes_max: usize) -> NdjsonPushes<R> {
        NdjsonPushes {
            reader,
            line_bytes_max,
            line: String::new(),
            line_number: 0,
            items: 0,
            error: None,
            done: false,
        }
    }

    fn next_item(&mut self) -> Result<Option<(Vec<String>, String)>, String> {
        // Bounded by the stream length: every turn consumes a line.
        loop {
            self.line.clear();
            self.line_number += 1;
            let limit_bytes = self.line_bytes_max as u64 + 1; // + the newline
            let read_bytes = (&mut self.reader)
                .take(limit_bytes)
                .read_line(&mut self.line)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::InvalidData => "is not UTF-8".to_owned(),
                    _ => format!("could not be read: {e}"),
                })?;
            if read_bytes == 0 {
                return Ok(None);
            }
            if read_bytes as u64 == limit_bytes && !self.line.ends_with('\n') {
                return Err(format!(
                    "is longer than {} bytes; one push must fit in a frame",
                    self.line_bytes_max
                ));
            }
            if let Some(item) = parse_push_line(&self.line)? {
                return Ok(Some(item));
            }
        }
    }
}

impl<R: BufRead> Iterator for NdjsonPushes<R> {
    type Item = (Vec<String>, String);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_item() {
            Ok(Some(item)) => {
                self.items += 1;
                Some(item)
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(reason) => {
                self.done = true;
                let line = self.line_number;
                self.error = Some(ClientError::InvalidData(format!("line {line}: {reason}")));
                self.line = String::new(); // a refused long line keeps no buffer
                None
            }
        }
    }
}
