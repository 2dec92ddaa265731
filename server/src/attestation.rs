//! Which authenticator models may enroll: with `--attestation` listing AAGUIDs, the vendors'
//! attestation roots (`--attestation-ca`) are read at start, and a new key counts as one of those
//! models only if webauthn-rs verifies its attestation statement up to one of the roots.

use std::path::Path;

use uuid::Uuid;
use webauthn_rs::prelude::{AttestationCaList, AttestationCaListBuilder, WebauthnError};

use crate::config::{AttestationPolicy, Config};
use crate::error::ApiError;

/// The roots and models admitted, when the policy lists models.
///
/// # Errors
/// When models are listed without roots or roots without models, or a root cannot be read.
pub fn admitted(config: &Config) -> Result<Option<AttestationCaList>, String> {
    match (&config.attestation, config.attestation_cas.is_empty()) {
        (AttestationPolicy::None, true) => Ok(None),
        (AttestationPolicy::None, false) => {
            Err("--attestation-ca needs --attestation listing the admitted models (AAGUIDs)".into())
        }
        (AttestationPolicy::Aaguids(_), true) => Err(
            "--attestation lists models, but a model is only as good as the attestation that \
             proves it: give the vendors' attestation roots with --attestation-ca (PEM files)"
                .into(),
        ),
        (AttestationPolicy::Aaguids(models), false) => {
            roots(&config.attestation_cas, models).map(Some)
        }
    }
}

fn roots(files: &[std::path::PathBuf], models: &[Uuid]) -> Result<AttestationCaList, String> {
    let mut builder = AttestationCaListBuilder::new();
    for file in files {
        let pem = read(file)?;
        for model in models {
            builder
                .insert_device_pem(
                    &pem,
                    *model,
                    format!("admitted by --attestation ({model})"),
                    Default::default(),
                )
                .map_err(|e| format!("{}: not a usable PEM certificate: {e:?}", file.display()))?;
        }
    }
    Ok(builder.build())
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Why webauthn-rs refused an attested registration: the model's attestation (no statement, an
/// untrusted chain, another model) is the policy's refusal; anything else is a bad answer.
#[must_use]
pub fn refusal(error: WebauthnError) -> ApiError {
    use WebauthnError as E;
    match error {
        E::AttestationNotSupported
        | E::AttestationNotVerifiable
        | E::AttestationTrustFailure
        | E::AttestationChainNotTrusted(_)
        | E::AttestationUntrustedAaguid
        | E::AttestationFormatMissingAaguid
        | E::AttestationCertificateAAGUIDMismatch
        | E::AttestationCertificateRequirementsNotMet
        | E::AttestationLeafCertMissing
        | E::AttestationStatementX5CMissing
        | E::AttestationStatementX5CInvalid
        | E::AttestationCertificateTrustStoreEmpty => ApiError::AttestationRefused,
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: AttestationPolicy, roots: Vec<std::path::PathBuf>) -> Config {
        let origin = url::Url::parse("http://localhost:8080").expect("url");
        let mut config = Config::for_tests("unused".into(), origin);
        config.attestation = policy;
        config.attestation_cas = roots;
        config
    }

    #[test]
    fn models_need_roots_roots_need_models_and_roots_must_read() {
        let model = AttestationPolicy::Aaguids(vec![Uuid::new_v4()]);
        assert!(matches!(
            admitted(&config(AttestationPolicy::None, vec![])),
            Ok(None)
        ));
        let no_roots = admitted(&config(model.clone(), vec![])).expect_err("refused");
        assert!(no_roots.contains("--attestation-ca"), "{no_roots}");
        let no_models = admitted(&config(AttestationPolicy::None, vec!["root.pem".into()]))
            .expect_err("refused");
        assert!(no_models.contains("--attestation "), "{no_models}");
        let missing = admitted(&config(model.clone(), vec!["/nonexistent/root.pem".into()]))
            .expect_err("refused");
        assert!(
            missing.contains("cannot read /nonexistent/root.pem"),
            "{missing}"
        );
        let dir = tempfile::tempdir().expect("a directory");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("written");
        let unusable = admitted(&config(model, vec![garbage])).expect_err("refused");
        assert!(
            unusable.contains("not a usable PEM certificate"),
            "{unusable}"
        );
    }
}
