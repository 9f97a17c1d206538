//! Names that appear in URLs and configuration: tenants, queues, label keys.

/// Longest tenant or queue name.
pub const MAX_NAME_LEN: usize = 63;
/// `check_resource_name` as a regular expression, for the OpenAPI document.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

/// A tenant or queue name: 1–63 characters of lowercase ASCII letters, digits, `-` and `_`,
/// starting with a letter or digit. Safe in a URL path segment without escaping.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters, got {}", name.len()));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!("must start with a lowercase letter or digit: {name:?}"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!("may contain only lowercase letters, digits, '-' and '_', found {bad:?} in {name:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_names() {
        for good in ["a", "default", "team-a_1", "0queue"] {
            assert_eq!(check_resource_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "A", "a b", "ä", &"x".repeat(64)] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
    }
}
