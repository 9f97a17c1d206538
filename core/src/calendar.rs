//! Cron expressions read in a time zone, shared by the autoscaler's schedules and job
//! schedules: one parser, so both accept exactly the same expressions and zones.

use std::str::FromStr;

/// A cron expression the `cron` crate reads: `sec min hour day-of-month month day-of-week
/// [year]`; five fields get a leading `0` seconds field.
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let fields = expression.split_whitespace().count();
    let full = if fields == 5 { format!("0 {expression}") } else { expression.to_owned() };
    cron::Schedule::from_str(&full).map_err(|error| format!("does not parse as a cron expression: {error}"))
}

/// An IANA time zone (`Europe/Madrid`, `UTC`).
pub fn parse_zone(zone: &str) -> Result<chrono_tz::Tz, String> {
    zone.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone {zone:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_get_a_seconds_field_and_six_are_read_as_they_are() {
        assert_eq!(parse_cron("0 8 * * Mon-Fri").expect("a value").to_string(), "0 0 8 * * Mon-Fri");
        assert!(parse_cron("* * * * * *").is_ok());
        assert!(parse_cron("every minute").expect_err("an error").contains("does not parse"));
        assert!(parse_zone("Europe/Madrid").is_ok());
        assert!(parse_zone("Mars/Olympus").expect_err("an error").contains("unknown time zone"));
    }
}
