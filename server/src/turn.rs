//! Short-lived TURN credentials in coturn's REST-secret scheme (`use-auth-secret`): the username
//! is an expiry time and an opaque tag, the password the base64 HMAC-SHA1 of the username under
//! the secret the TURN server shares with this one. The TURN server learns no member id.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha1::Sha1;
use tessera_wire::TurnCredentials;

/// The secret shared with the TURN server (`static-auth-secret` in coturn). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(String);

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(…)")
    }
}

impl FromStr for TurnSecret {
    type Err = String;

    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        if secret.len() < 16 {
            return Err("the TURN secret must be at least 16 characters".into());
        }
        Ok(TurnSecret(secret.to_owned()))
    }
}

/// Checks the ICE server URLs handed to members: `stun:`, `stuns:`, `turn:` or `turns:` each.
///
/// # Errors
/// The first URL that is not one, or TURN URLs without a secret to sign credentials with.
pub fn check_urls(urls: &[String], secret: Option<&TurnSecret>) -> Result<(), String> {
    for url in urls {
        let scheme = url.split(':').next().unwrap_or_default();
        if !matches!(scheme, "stun" | "stuns" | "turn" | "turns") || url.len() <= scheme.len() + 1 {
            return Err(format!(
                "the ICE server URL {url:?} must start with stun:, stuns:, turn: or turns:"
            ));
        }
        if scheme.starts_with("turn") && secret.is_none() {
            return Err(format!(
                "the TURN URL {url:?} needs --turn-secret (the TURN server's static-auth-secret)"
            ));
        }
    }
    if secret.is_some() && urls.is_empty() {
        return Err("--turn-secret needs at least one --ice-url".into());
    }
    Ok(())
}

/// Credentials valid until `now + ttl_secs` (Unix seconds) for the ICE servers `urls`.
#[must_use]
pub fn credentials(
    secret: &TurnSecret,
    urls: &[String],
    now: i64,
    ttl_secs: u64,
) -> TurnCredentials {
    let expiry = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let mut tag = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut tag);
    let username = format!("{expiry}:{}", URL_SAFE_NO_PAD.encode(tag));
    TurnCredentials {
        urls: urls.to_vec(),
        credential: password(secret, &username),
        username,
        ttl_secs,
    }
}

/// The password for `username`: base64 of HMAC-SHA1(secret, username), as coturn computes it.
fn password(secret: &TurnSecret, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.0.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_expire_when_asked_and_name_no_one() {
        let secret: TurnSecret = "a shared secret of some length".parse().expect("secret");
        let urls = vec!["turn:turn.example:3478".to_owned()];
        let a = credentials(&secret, &urls, 1_000, 600);
        let b = credentials(&secret, &urls, 1_000, 600);
        assert!(a.username.starts_with("1600:"), "{}", a.username);
        assert_ne!(a.username, b.username, "each request gets its own tag");
        assert_eq!(a.credential, password(&secret, &a.username));
        assert_ne!(a.credential, b.credential);
        assert_eq!(a.urls, urls);
        assert_eq!(a.ttl_secs, 600);
        assert!(!format!("{secret:?}").contains("shared"));
    }

    #[test]
    fn the_password_is_coturns_hmac_sha1() {
        // Computed independently: printf '%s' 'user' | openssl dgst -sha1 -hmac 'key' -binary | base64
        let secret = TurnSecret("key".to_owned());
        assert_eq!(password(&secret, "user"), "7hn70X4egRo203m9RpFPlFr/D+0=");
    }

    #[test]
    fn urls_and_secrets_are_checked() {
        let secret: TurnSecret = "0123456789abcdef".parse().expect("secret");
        assert!("short".parse::<TurnSecret>().is_err());
        assert!(check_urls(&["stun:127.0.0.1:3478".into()], None).is_ok());
        assert!(check_urls(&["turn:h:3478?transport=udp".into()], Some(&secret)).is_ok());
        assert!(check_urls(&["turn:h:3478".into()], None).is_err());
        assert!(check_urls(&["http://h".into()], Some(&secret)).is_err());
        assert!(check_urls(&["turn:".into()], Some(&secret)).is_err());
        assert!(check_urls(&[], Some(&secret)).is_err());
        assert!(check_urls(&[], None).is_ok());
    }
}
