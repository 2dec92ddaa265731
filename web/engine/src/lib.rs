//! The engine in the page: what the browser's JavaScript may call, a thin shell over
//! `tessera-engine` (no protocol logic lives here): the device key and its certificate here, the
//! running device in [`device`]. Values cross as JSON text in the shapes the server's API and the
//! browser's WebAuthn JSON helpers use, or as plain JavaScript values; failures as a sentence.

pub mod device;
pub mod membership;

use tessera_engine::CIPHERSUITE;
use tessera_engine::DeviceKey;
use tessera_engine::codec::from_json;
use tessera_engine::identity::{DeviceCertificate, certificate_request, key_fingerprint};
#[cfg(test)]
use tessera_wire::Base64Url;
use tessera_wire::{MemberInfo, PublicKeyInfo};
use uuid::Uuid;
use wasm_bindgen::prelude::wasm_bindgen;
use webauthn_rs_proto::PublicKeyCredential;

/// What the page shows of the engine it loaded: its version and the circle's ciphersuite.
#[wasm_bindgen(js_name = engineInfo)]
#[must_use]
pub fn engine_info() -> String {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ciphersuite": format!("{CIPHERSUITE:?}"),
    })
    .to_string()
}

pub(crate) fn uuid(text: &str, what: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|_| format!("not a {what} id: {text:?}"))
}

/// A device's MLS signature key, made in the page with the browser's randomness.
#[wasm_bindgen]
pub struct WebDeviceKey(pub(crate) DeviceKey);

#[wasm_bindgen]
impl WebDeviceKey {
    /// A fresh key.
    ///
    /// # Errors
    /// When the browser gives no randomness.
    pub fn generate() -> Result<WebDeviceKey, String> {
        DeviceKey::generate()
            .map(WebDeviceKey)
            .map_err(|e| e.to_string())
    }

    /// The public key (Ed25519, 32 bytes).
    #[wasm_bindgen(js_name = publicKey)]
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public().to_vec()
    }

    /// The WebAuthn request options (the JSON of `publicKey`, for
    /// `PublicKeyCredential.parseRequestOptionsFromJSON`) with which `member`'s hardware key
    /// certifies this key as their device `device`.
    ///
    /// # Errors
    /// When an id is not a UUID.
    #[wasm_bindgen(js_name = certificateRequest)]
    pub fn certificate_request(
        &self,
        rp_id: &str,
        member: &str,
        device: &str,
    ) -> Result<String, String> {
        let request = certificate_request(
            rp_id,
            uuid(member, "member")?,
            uuid(device, "device")?,
            self.0.public(),
        );
        serde_json::to_string(&request.public_key).map_err(|e| e.to_string())
    }

    /// The device certificate made of the hardware key's answer (`credential.toJSON()`, as JSON
    /// text) to [`WebDeviceKey::certificate_request`].
    ///
    /// # Errors
    /// When an id is not a UUID or the answer is not an assertion.
    pub fn certify(&self, member: &str, device: &str, assertion: &str) -> Result<String, String> {
        let assertion: PublicKeyCredential = from_json(assertion)
            .map_err(|e| format!("the hardware key's answer is not an assertion: {e}"))?;
        let certificate = DeviceCertificate::from_assertion(
            uuid(member, "member")?,
            uuid(device, "device")?,
            self.0.public(),
            &assertion,
        );
        serde_json::to_string(&certificate).map_err(|e| e.to_string())
    }
}

/// Checks a device certificate as every peer will: against its member's passkeys in the circle
/// directory (`GET /api/v1/members`, as JSON text) for the server's `origin` and `rp_id`. Returns
/// the fingerprint of the hardware key that certified it.
///
/// # Errors
/// Why the certificate is refused.
#[wasm_bindgen(js_name = verifyCertificate)]
pub fn verify_certificate(
    certificate: &str,
    directory: &str,
    origin: &str,
    rp_id: &str,
) -> Result<String, String> {
    let certificate: DeviceCertificate =
        from_json(certificate).map_err(|_| "not a device certificate".to_owned())?;
    let directory: Vec<MemberInfo> =
        from_json(directory).map_err(|_| "not a circle directory".to_owned())?;
    let member = directory
        .iter()
        .find(|m| m.id == certificate.member)
        .ok_or("the member is not in the circle directory")?;
    certificate
        .verify(&member.passkeys, origin, rp_id)
        .map_err(|e| e.to_string())?;
    let key = member
        .passkeys
        .iter()
        .find(|k| k.credential_id == certificate.credential_id)
        .ok_or("the certifying key is not the member's")?;
    fingerprint(key)
}

/// The fingerprint members compare of a passkey in the directory.
fn fingerprint(key: &PublicKeyInfo) -> Result<String, String> {
    Ok(key_fingerprint(key.public_key.as_slice()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tessera_softkey::SoftKey;

    pub(crate) use tessera_softkey::testing::ORIGIN;

    /// A member with a software key registered through real webauthn-rs, as the directory
    /// lists them.
    pub(crate) fn member() -> (SoftKey, MemberInfo) {
        tessera_softkey::testing::member(tessera_wire::Role::Member)
    }

    /// What the page does: ask the key with the options, make the certificate of its answer.
    pub(crate) fn certify_in_page(
        key: &mut SoftKey,
        info: &MemberInfo,
        device: Uuid,
    ) -> (WebDeviceKey, String) {
        let device_key = WebDeviceKey::generate().expect("key");
        let (member, device) = (info.id.to_string(), device.to_string());
        let options = device_key
            .certificate_request("localhost", &member, &device)
            .expect("options");
        let request = serde_json::from_str(&format!("{{\"publicKey\":{options}}}")).expect("json");
        let assertion = key.sign_in(&request, ORIGIN).expect("the key signs");
        let assertion = serde_json::to_string(&assertion).expect("json");
        let certificate = device_key
            .certify(&member, &device, &assertion)
            .expect("certificate");
        (device_key, certificate)
    }

    #[test]
    fn the_info_names_the_version_and_ciphersuite_and_keys_are_fresh() {
        let info: serde_json::Value = serde_json::from_str(&engine_info()).expect("json");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            info["ciphersuite"]
                .as_str()
                .is_some_and(|c| c.contains("X25519"))
        );
        let (a, b) = (
            WebDeviceKey::generate().expect("key"),
            WebDeviceKey::generate().expect("key"),
        );
        assert_eq!(a.public_key().len(), 32);
        assert_ne!(a.public_key(), b.public_key());
    }

    #[test]
    fn a_certificate_made_in_the_page_verifies_against_the_directory_and_nothing_else() {
        let (mut key, info) = member();
        let (_, other) = member();
        let (_, certificate) = certify_in_page(&mut key, &info, Uuid::new_v4());
        let directory = serde_json::to_string(&vec![info.clone(), other.clone()]).expect("json");
        let fingerprint =
            verify_certificate(&certificate, &directory, ORIGIN, "localhost").expect("verifies");
        assert_eq!(fingerprint, key_fingerprint(&key.public_key_sec1()));
        // Refused: the member is gone from the directory, another origin or RP id, another
        // member's passkeys, an altered device key, garbage.
        let without = serde_json::to_string(&vec![other.clone()]).expect("json");
        assert!(verify_certificate(&certificate, &without, ORIGIN, "localhost").is_err());
        assert!(
            verify_certificate(&certificate, &directory, "http://evil.example", "localhost")
                .is_err()
        );
        assert!(verify_certificate(&certificate, &directory, ORIGIN, "evil.example").is_err());
        let mut swapped = other.clone();
        swapped.id = info.id;
        let swapped = serde_json::to_string(&vec![swapped]).expect("json");
        assert!(verify_certificate(&certificate, &swapped, ORIGIN, "localhost").is_err());
        let mut altered: DeviceCertificate = serde_json::from_str(&certificate).expect("json");
        altered.device_key = Base64Url::from(vec![7u8; 32]);
        let altered = serde_json::to_string(&altered).expect("json");
        assert!(verify_certificate(&altered, &directory, ORIGIN, "localhost").is_err());
        assert!(verify_certificate("{}", &directory, ORIGIN, "localhost").is_err());
        assert!(verify_certificate(&certificate, "[1]", ORIGIN, "localhost").is_err());
    }

    #[test]
    fn ids_and_answers_that_are_not_what_they_claim_are_refused() {
        let key = WebDeviceKey::generate().expect("key");
        let device = Uuid::new_v4().to_string();
        assert!(
            key.certificate_request("localhost", "nobody", &device)
                .is_err()
        );
        assert!(key.certify(&device, "x", "{}").is_err());
        assert!(key.certify(&device, &device, "not json").is_err());
    }
}
