//! Micro-benchmarks of the pure pieces on the launch hot path: parsing the launch query (with the
//! redirect validator and NHS check), building the OTP login URL, opening a sealed token, and a
//! cache hit in the pairing store. The end-to-end load benchmark against nginx is separate.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use pkb_edge::clock::SystemClock;
use pkb_edge::launch::LaunchParams;
use pkb_edge::patient::PatientContext;
use pkb_edge::pkb::urls::{landing_with_context, otp_login_url, ContextParams};
use pkb_edge::relative_path;
use pkb_edge::secret::{AccessToken, Otp, RefreshToken};
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::sqlite::SqlitePairingStore;
use pkb_edge::store::{Pairings, TokenSet};

fn names() -> ContextParams {
    ContextParams {
        national_id: "contextNationalId".into(),
        national_id_type: "contextNationalIdType".into(),
        email: "contextUserEmail".into(),
    }
}

fn pure(c: &mut Criterion) {
    let names = names();
    let query = "contextNationalId=9434765919&contextNationalIdType=NHS&redirect_uri=%2Fauth%2FpatientSummary.action%3Ftab%3DpatientSummary";
    c.bench_function("launch query parse + validate", |b| {
        b.iter(|| LaunchParams::parse(black_box(Some(query)), &names))
    });
    c.bench_function("redirect_uri validation", |b| {
        b.iter(|| relative_path::parse(black_box("/auth/patientSummary.action?tab=patientSummary")))
    });
    let context = PatientContext::NationalId {
        id: "9434765919".into(),
        id_type: "NHS".into(),
    };
    let otp = Otp::new("Q2hhbmdlIG1lIHRvIGEgcmVhbCBPVFA");
    c.bench_function("otp login URL with patient context", |b| {
        b.iter(|| {
            let landing = landing_with_context(
                "/auth/patientSummary.action?tab=patientSummary",
                &context,
                &names,
            );
            otp_login_url(
                "https://sandbox.patientsknowbest.com",
                "/otp.action",
                "otpToken",
                &otp,
                Some(&landing),
            )
        })
    });
    let keyring = Keyring::parse(&Keyring::generate_line("k1")).unwrap();
    let sealed = keyring.seal(
        b"an-access-token-of-typical-length-0123456789",
        b"pkb-edge|user|access",
    );
    c.bench_function("token decryption (AES-256-GCM)", |b| {
        b.iter(|| keyring.open("k1", black_box(&sealed), b"pkb-edge|user|access"))
    });
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db").to_string_lossy().into_owned();
    let pairings = rt.block_on(async {
        let backend = Arc::new(SqlitePairingStore::open(&path).await.unwrap());
        let keyring = Keyring::parse(&Keyring::generate_line("k1")).unwrap();
        let p = Pairings::open(
            backend,
            keyring,
            1000,
            Duration::from_secs(300),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        p.save(
            "dr.jones",
            TokenSet {
                access_token: AccessToken::new("access-token-0123456789"),
                refresh_token: Some(RefreshToken::new("refresh-token-0123456789")),
                access_expires_at: i64::MAX / 2,
            },
        )
        .await
        .unwrap();
        p
    });
    c.bench_function("pairing cache hit", |b| {
        b.iter(|| rt.block_on(pairings.get(black_box("dr.jones"))))
    });
}

criterion_group!(benches, pure, cache);
criterion_main!(benches);
