//! The attestation policy: only the listed models enroll, each proven by an attestation statement
//! that verifies up to one of the vendors' roots. A model merely claimed, self-attested, or
//! vouched for by another root enrolls nothing.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::pkcs8::DecodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use reqwest::StatusCode;
use tessera_client::api::invitation_token;
use tessera_client::authenticator::{Attester, SoftKey, Tamper};
use tessera_server::config::AttestationPolicy;
use tessera_tests::TestApp;
use uuid::Uuid;

use crate::support::assert_refused;

/// FIDO's certificate extension naming the authenticator model (id-fido-gen-ce-aaguid).
const AAGUID_EXTENSION: &[u64] = &[1, 3, 6, 1, 4, 1, 45724, 1, 1, 4];

/// A vendor of test authenticators: its root, written as a PEM file, and the key that signs its
/// models' certificates.
struct Vendor {
    root_pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Vendor {
    fn new(dir: &Path, name: &str) -> Vendor {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a root key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} Attestation Root"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("a self-signed root");
        let body = base64::engine::general_purpose::STANDARD.encode(root.der().as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        let root_pem = dir.join(format!("{name}.pem"));
        std::fs::write(&root_pem, pem).expect("the root written");
        Vendor {
            root_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The attestation of one of this vendor's authenticators of `model`, as burnt into it.
    fn authenticator(&self, model: Uuid) -> Attester {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("an attestation key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let name = &mut params.distinguished_name;
        name.push(DnType::CountryName, "SE");
        name.push(DnType::OrganizationName, "Tessera Test Vendor");
        name.push(DnType::OrganizationalUnitName, "Authenticator Attestation");
        name.push(DnType::CommonName, "Tessera Test Key");
        params.is_ca = IsCa::ExplicitNoCa;
        // The extension's value is an OCTET STRING holding the 16 bytes.
        let mut aaguid = vec![0x04, 0x10];
        aaguid.extend_from_slice(model.as_bytes());
        params.custom_extensions =
            vec![CustomExtension::from_oid_content(AAGUID_EXTENSION, aaguid)];
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("certified by the root");
        Attester::Vendor {
            key: SigningKey::from_pkcs8_der(&key.serialize_der()).expect("a P-256 key"),
            chain: vec![certificate.der().to_vec()],
            aaguid: *model.as_bytes(),
        }
    }
}

/// A way to answer the registration options.
type Register<'a> = dyn Fn(
        &webauthn_rs_proto::CreationChallengeResponse,
    ) -> Result<
        (SoftKey, webauthn_rs_proto::RegisterPublicKeyCredential),
        tessera_client::authenticator::AuthenticatorError,
    > + 'a;

/// A server admitting `model`, vouched for by the roots in `roots`.
async fn admitting(model: Uuid, roots: &[&Vendor]) -> TestApp {
    let roots: Vec<PathBuf> = roots.iter().map(|v| v.root_pem.clone()).collect();
    TestApp::spawn_with(|config| {
        config.attestation = AttestationPolicy::Aaguids(vec![model]);
        config.attestation_cas = roots;
    })
    .await
}

#[tokio::test]
async fn a_listed_model_proven_by_its_vendors_root_enrolls_and_logs_in() {
    let dir = tempfile::tempdir().expect("a directory");
    let vendor = Vendor::new(dir.path(), "Vendor");
    let model = Uuid::new_v4();
    let app = admitting(model, &[&vendor]).await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let mut client = app.client();
    let options = client.enroll_start(&token, None).await.expect("start");
    let (mut key, credential) = SoftKey::register_attested(
        &options.options,
        app.origin.as_str(),
        &vendor.authenticator(model),
    )
    .expect("register");
    client
        .enroll_finish(&options.ceremony, credential)
        .await
        .expect("a proven model enrolls");
    assert_eq!(
        client.passkeys().await.expect("keys")[0].aaguid,
        Some(model)
    );
    app.client()
        .login(&mut key)
        .await
        .expect("and logs in like any key");
}

#[tokio::test]
async fn a_model_claimed_self_attested_or_vouched_for_by_another_root_enrolls_nothing() {
    let dir = tempfile::tempdir().expect("a directory");
    let vendor = Vendor::new(dir.path(), "Vendor");
    let stranger = Vendor::new(dir.path(), "Stranger");
    let model = Uuid::new_v4();
    let app = admitting(model, &[&vendor]).await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let origin = app.origin.as_str().to_owned();
    let claims: Vec<(&str, Box<Register<'_>>)> = vec![
        (
            "a `none` attestation naming the model",
            Box::new(|options| {
                let claim = Tamper {
                    aaguid: Some(*model.as_bytes()),
                    ..Tamper::default()
                };
                SoftKey::register_with(options, &origin, &claim)
            }),
        ),
        (
            "a self attestation naming the model",
            Box::new(|options| {
                let claim = Attester::SelfAttested {
                    aaguid: *model.as_bytes(),
                };
                SoftKey::register_attested(options, &origin, &claim)
            }),
        ),
        (
            "the model, certified by a root not admitted",
            Box::new(|options| {
                SoftKey::register_attested(options, &origin, &stranger.authenticator(model))
            }),
        ),
        (
            "another model of the admitted vendor",
            Box::new(|options| {
                SoftKey::register_attested(options, &origin, &vendor.authenticator(Uuid::new_v4()))
            }),
        ),
    ];
    for (what, register) in claims {
        let mut client = app.client();
        let options = client.enroll_start(&token, None).await.expect("start");
        let (_key, credential) = register(&options.options).expect("register");
        let answer = client.enroll_finish(&options.ceremony, credential).await;
        assert_refused(answer, StatusCode::FORBIDDEN, "attestation_refused");
        assert!(client.session().is_none(), "{what}: no session");
    }
    assert!(
        app.client().enroll_start(&token, None).await.is_ok(),
        "the invitation survives every refusal"
    );
}
