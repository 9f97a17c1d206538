//! Rendering API answers: aligned tables and field lists for people, the API's own JSON
//! for scripts. Values are read from JSON generically, so a field the API adds or leaves
//! out shows as `-` instead of breaking a command. Never talks to the API.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::client::api::ClientError;

/// How wide a free-text cell (an error, a command line) may grow in a table.
pub const MAX_TEXT_WIDTH: usize = 60;
const COLUMN_GAP: &str = "  ";

/// One column of a table: its header and how to read its cell from a row.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&Value) -> String,
}

impl Column {
    pub const fn new(header: &'static str, cell: fn(&Value) -> String) -> Self {
        Self { header, cell }
    }
}

/// Writes to stdout; a reader that went away (`hodei openapi | head`) ends the output
/// quietly instead of a panic.
pub fn print_quietly(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// Writes `text` and a newline to stdout.
pub fn print_line(text: &str) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// Writes `value` as indented JSON.
pub fn print_json(value: &Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    print_line(&text)
}

pub fn print_table(columns: &[Column], rows: &[Value]) -> Result<(), ClientError> {
    let text = render_table(columns, rows);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Writes `label: value` lines with the values aligned; `None` values are left out.
pub fn print_fields(fields: &[(&str, Option<String>)]) -> Result<(), ClientError> {
    let text = render_fields(fields);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// A table with a header line and columns two spaces apart; the last column is not padded.
pub fn render_table(columns: &[Column], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> =
        rows.iter().map(|row| columns.iter().map(|column| one_line((column.cell)(row))).collect()).collect();
    let headers: Vec<String> = columns.iter().map(|column| column.header.to_owned()).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|index| {
            std::iter::once(&headers).chain(&cells).map(|line| line[index].chars().count()).max().unwrap_or_default()
        })
        .collect();
    let mut text = String::new();
    for line in std::iter::once(&headers).chain(&cells) {
        let mut rendered = String::new();
        for (index, cell) in line.iter().enumerate() {
            if index > 0 {
                rendered.push_str(COLUMN_GAP);
            }
            rendered.push_str(cell);
            if index + 1 < line.len() {
                let padding = widths[index] - cell.chars().count();
                rendered.extend(std::iter::repeat_n(' ', padding));
            }
        }
        text.push_str(rendered.trim_end());
        text.push('\n');
    }
    text
}

pub fn render_fields(fields: &[(&str, Option<String>)]) -> String {
    let width = fields.iter().map(|(label, _)| label.chars().count()).max().unwrap_or_default();
    fields
        .iter()
        .filter_map(|(label, value)| value.as_ref().map(|value| format!("{label:<width$}  {value}\n")))
        .collect()
}

/// A JSON value as a cell: strings bare, `null` (or absent) as `-`, anything else as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Like `text`, but `None` for `null`, for `print_fields`.
pub fn field(value: &Value) -> Option<String> {
    (!value.is_null()).then(|| text(value))
}

/// An RFC 3339 time to the second, in UTC; anything else as `text`.
pub fn time(value: &Value) -> String {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| text(value))
}

/// `used/total` of two numbers.
pub fn used_of(used: &Value, total: &Value) -> String {
    format!("{}/{}", text(used), text(total))
}

/// An argv array as a shell would show it: arguments with spaces or quotes single-quoted.
pub fn command_line(argv: &Value) -> String {
    let Some(argv) = argv.as_array() else {
        return text(argv);
    };
    let quoted: Vec<String> = argv
        .iter()
        .map(|argument| {
            let argument = text(argument);
            let plain =
                !argument.is_empty() && argument.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
            if plain {
                argument
            } else {
                format!("'{}'", argument.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

/// At most `width` characters, with `…` when cut.
pub fn truncated(text: String, width: usize) -> String {
    if text.chars().count() <= width {
        return text;
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A cell on one line: newlines and tabs become spaces.
fn one_line(text: String) -> String {
    if text.contains(['\n', '\r', '\t']) {
        text.replace(['\n', '\r', '\t'], " ")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_columns_and_show_missing_values_as_dashes() {
        let columns = [
            Column::new("ID", |row| text(&row["id"])),
            Column::new("STATE", |row| text(&row["state"])),
            Column::new("ERROR", |row| text(&row["error"])),
        ];
        let rows = [json!({"id": "a", "state": "queued"}), json!({"id": "bbbbbb", "state": "x", "error": "no\nway"})];
        assert_eq!(render_table(&columns, &rows), "ID      STATE   ERROR\na       queued  -\nbbbbbb  x       no way\n");
    }

    #[test]
    fn fields_align_and_skip_absent_values() {
        let fields = [("id", Some("a".to_owned())), ("exit code", None), ("state", Some("queued".to_owned()))];
        assert_eq!(render_fields(&fields), "id         a\nstate      queued\n");
    }

    #[test]
    fn cells_render_json_for_people() {
        assert_eq!(time(&json!("2025-03-01T10:20:30.123456Z")), "2025-03-01T10:20:30Z");
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(command_line(&json!(["sh", "-c", "echo 'hi there'"])), r"sh -c 'echo '\''hi there'\'''");
        assert_eq!(command_line(&json!(["python3", "train.py", "--epochs=3", ""])), "python3 train.py --epochs=3 ''");
        assert_eq!(truncated("abcdef".to_owned(), 4), "abc…");
        assert_eq!(truncated("abc".to_owned(), 4), "abc");
        assert_eq!(used_of(&json!(500), &json!(1000)), "500/1000");
    }
}
