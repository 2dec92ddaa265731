//! Assertions shared by the API tests.

use reqwest::StatusCode;
use tessera_client::api::{ApiClientError, ApiClientResult};

/// Asserts that a call was refused with this status and error code, and returns the message.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: ApiClientResult<T>,
    status: StatusCode,
    code: &str,
) -> String {
    match result {
        Err(ApiClientError::Refused { status: got, body }) => {
            assert_eq!(
                (got, body.error.as_str()),
                (status, code),
                "refused, but not as expected: {}",
                body.message
            );
            assert!(!body.message.is_empty(), "a refusal explains itself");
            body.message
        }
        other => panic!("expected a refusal {status} {code}, got {other:?}"),
    }
}
