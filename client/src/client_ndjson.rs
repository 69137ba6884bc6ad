//! `pushgate push --ndjson`: reading batches of pushes, one JSON object a
//! line, with bounded memory.

use super::ClientError;
use serde_core::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::io::{self, BufRead, Read};

/// One `--ndjson` line: `{"users":["a","b"],"data":<any JSON>}`. Unknown
/// keys are refused so a typo (`"user"`) is reported, not silently ignored.
struct PushLine {
    users: Vec<String>,
    /// The data's text as written, only checked to be JSON: rebuilding it
    /// from a `Value` would round big integers and rewrite floats (`1.10`
    /// → `1.1`), and devices are promised the payload as sent.
    data: Box<RawValue>,
}

// `Deserialize` by hand, as `#[derive(Deserialize)]` with
// `#[serde(deny_unknown_fields)]` would generate it (same errors, same
// order of checks), so the crate needs serde's traits and not its derive
// macros.

const FIELDS: &[&str] = &["users", "data"];

impl<'de> Deserialize<'de> for PushLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PushLine, D::Error> {
        deserializer.deserialize_struct("PushLine", FIELDS, PushLineVisitor)
    }
}

enum Field {
    Users,
    Data,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
        match name {
            "users" => Ok(Field::Users),
            "data" => Ok(Field::Data),
            other => Err(E::unknown_field(other, FIELDS)),
        }
    }
}

struct PushLineVisitor;

impl<'de> Visitor<'de> for PushLineVisitor {
    type Value = PushLine;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct PushLine")
    }

    /// `[users, data]`: serde accepts a struct as a sequence too.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PushLine, A::Error> {
        let expected = &"struct PushLine with 2 elements";
        let users = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, expected))?;
        let data = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, expected))?;
        Ok(PushLine { users, data })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PushLine, A::Error> {
        let mut users: Option<Vec<String>> = None;
        let mut data: Option<Box<RawValue>> = None;
        // Bounded by the line: every turn consumes a key and its value.
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Users if users.is_some() => return Err(de::Error::duplicate_field("users")),
                Field::Users => users = Some(map.next_value()?),
                Field::Data if data.is_some() => return Err(de::Error::duplicate_field("data")),
                Field::Data => data = Some(map.next_value()?),
            }
        }
        let users = users.ok_or_else(|| de::Error::missing_field("users"))?;
        let data = data.ok_or_else(|| de::Error::missing_field("data"))?;
        Ok(PushLine { users, data })
    }
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
/// [`Client::push_many`](super::Client::push_many). Reading stops at the first bad line; the error is
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
    /// [`ndjson_line_bytes_max`](super::ndjson_line_bytes_max)) so one missing newline cannot fill memory.
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
