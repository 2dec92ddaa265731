//! Benchmark: a cold device checking a circle's whole chain of trust (issue 15): N members, each
//! admitted by an invitation the founder's hardware key signed (one ES256 and one Ed25519 check
//! each), next to N raw ES256 verifications with `p256` in the same run, and the same directory
//! checked again from memory (what a device pays on every later fetch).
//!
//! Run: `cargo bench -p tessera-engine --bench verify_chain` (environment: `MEMBERS`, a
//! comma-separated list of circle sizes; 1,000 by default).

use std::time::{Duration, Instant};

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey};
use tessera_engine::invitation::{InvitationSecret, InvitationStatement, SignedInvitation};
use tessera_engine::trust::{
    CheckedProofs, KeyProof, RootFingerprint, UsedInvitations, member_id_for, verify_directory_with,
};
use tessera_softkey::testing::{ORIGIN, member};
use tessera_wire::{MemberInfo, Role};
use uuid::Uuid;

const NOW: i64 = 1_800_000_000;

/// A circle of `n` members (the founder included), as an honest server lists it.
fn circle(n: usize) -> (Uuid, RootFingerprint, Vec<MemberInfo>) {
    let circle = Uuid::new_v4();
    let (mut founder_key, founder) = member(Role::Admin);
    let root = RootFingerprint::of(founder.id, &founder.passkeys[0]);
    let mut listed = vec![founder.clone()];
    for _ in 1..n {
        let secret = InvitationSecret::generate().expect("randomness");
        let statement = InvitationStatement {
            circle,
            invitation_key: secret.public_key(),
            role: Role::Member,
            expires_at: NOW + 3600,
            issuer: founder.id,
            recovers: None,
        };
        let signed =
            SignedInvitation::sign(statement, "localhost", |r| founder_key.sign_in(r, ORIGIN))
                .expect("the founder signs");
        let (_, mut info) = member(Role::Member);
        info.id = member_id_for(&root, &secret.public_key());
        let admission = secret.admit(signed, info.id, info.passkeys[0].clone(), NOW);
        info.proofs.push(KeyProof::Admission(admission).to_blob());
        listed.push(info);
    }
    (circle, root, listed)
}

fn raw_p256(n: usize) -> Duration {
    let key = SigningKey::from_slice(&[7; 32]).expect("key");
    let signed: Vec<(Vec<u8>, Signature)> = (0..n)
        .map(|i| {
            let message = format!("message {i}").into_bytes();
            let signature = key.sign(&message);
            (message, signature)
        })
        .collect();
    let verifying = *key.verifying_key();
    let start = Instant::now();
    for (message, signature) in &signed {
        verifying.verify(message, signature).expect("verifies");
    }
    start.elapsed()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMBERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000]);
    println!(
        "\n| members | cold chain check (ms) | ES256 checks | raw p256, same count (ms) | ratio | warm (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    for n in sizes.into_iter().filter(|n| *n >= 2) {
        let (circle, root, listed) = circle(n);
        let used = UsedInvitations::new();
        let mut checked = CheckedProofs::default();
        let start = Instant::now();
        let cold = verify_directory_with(
            &listed,
            circle,
            &root,
            (ORIGIN, "localhost"),
            (&used, &mut checked),
        );
        let cold_time = start.elapsed();
        assert_eq!(cold.members.len(), n, "every member is admitted");
        let start = Instant::now();
        let warm = verify_directory_with(
            &listed,
            circle,
            &root,
            (ORIGIN, "localhost"),
            (&used, &mut checked),
        );
        let warm_time = start.elapsed();
        assert_eq!(warm.members.len(), n);
        let raw = raw_p256(n - 1);
        println!(
            "| {n} | {:.1} | {} | {:.1} | {:.2} | {:.1} |",
            cold_time.as_secs_f64() * 1e3,
            n - 1,
            raw.as_secs_f64() * 1e3,
            cold_time.as_secs_f64() / raw.as_secs_f64(),
            warm_time.as_secs_f64() * 1e3,
        );
    }
}
