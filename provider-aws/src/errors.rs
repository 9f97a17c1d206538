//! AWS errors as [`ProviderError`]s: the AWS error code, its message, and whether trying
//! again can help (throttling, capacity, server errors).

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use hodei_provider::ProviderError;

/// Codes that mean "slow down": retried by the SDK first, retryable after it gave up.
pub const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "SlowDown",
];

/// Codes that mean "no capacity here, now": worth another instance type or subnet
/// (`aws-ec2` falls back on them), and worth retrying later.
pub const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "Unsupported",
];

/// Codes of AWS's own transient failures.
const SERVER_CODES: &[&str] = &["InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"];

/// Whether an error with this code is worth another instance type or subnet.
pub fn is_capacity_code(code: &str) -> bool {
    CAPACITY_CODES.contains(&code)
}

/// Whether an error with this code (and HTTP status, if any) is worth retrying.
pub fn is_retryable(code: &str, status: Option<u16>) -> bool {
    THROTTLING_CODES.contains(&code)
        || CAPACITY_CODES.contains(&code)
        || SERVER_CODES.contains(&code)
        || status.is_some_and(|status| status >= 500)
}

/// An SDK error of `operation` as a provider error.
pub fn from_sdk<E>(operation: &str, error: &SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|response| response.status().as_u16());
    match error.code() {
        Some(code) => {
            let message = error.message().map(str::to_owned).unwrap_or_else(|| DisplayErrorContext(error).to_string());
            ProviderError::coded(code, format!("{operation}: {message}"), is_retryable(code, status))
        }
        // No AWS error: the request did not get through (timeout, connection) or the
        // answer could not be read; retryable unless the request could not be built.
        None => {
            let retryable = !matches!(error, SdkError::ConstructionFailure(_));
            ProviderError { code: None, message: format!("{operation}: {}", DisplayErrorContext(error)), retryable }
        }
    }
}

/// A provider error's code, if it is one of these.
pub(crate) fn has_code(error: &ProviderError, codes: &[&str]) -> bool {
    error.code.as_deref().is_some_and(|code| codes.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes() {
        assert!(is_retryable("RequestLimitExceeded", Some(503)));
        assert!(is_retryable("InsufficientInstanceCapacity", Some(500)));
        assert!(is_retryable("SomethingNew", Some(502)));
        assert!(!is_retryable("UnauthorizedOperation", Some(403)));
        assert!(!is_retryable("InvalidParameterValue", Some(400)));
        assert!(is_capacity_code("Unsupported"));
        assert!(!is_capacity_code("InvalidAMIID.NotFound"));
    }
}
