//! Field-level validation errors: what was wrong and where, in words safe to show a client.

use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field. `field` is a dotted path into the request body (`command.argv[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in one input, so a client can fix them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationErrors {
    errors: Vec<FieldError>,
}

impl ValidationErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = Self::new();
        errors.add(field, message);
        errors
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into() });
    }

    /// Adds `other`'s errors with `prefix` in front of each field path.
    pub fn merge_prefixed(&mut self, prefix: &str, other: ValidationErrors) {
        for error in other.errors {
            self.errors.push(FieldError { field: format!("{prefix}{}", error.field), message: error.message });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

/// Checks that `value` lies in `min..=max`, recording a message naming the range if not.
pub fn check_range(errors: &mut ValidationErrors, field: &str, value: i64, min: i64, max: i64) {
    if value < min || value > max {
        errors.add(field, format!("must be between {min} and {max}, got {value}"));
    }
}
