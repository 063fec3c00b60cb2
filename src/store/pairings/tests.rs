use super::*;
use crate::core::clock::ManualClock;
use crate::store::sqlite::SqlitePairingStore;
use std::sync::atomic::{AtomicUsize, Ordering};

const NOW: i64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: String,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db").to_string_lossy().into_owned();
        Fixture {
            _dir: dir,
            path,
            clock: Arc::new(ManualClock::at(NOW)),
        }
    }

    async fn open(&self, keys: &str) -> Result<Pairings, StoreError> {
        let backend = Arc::new(SqlitePairingStore::open(&self.path).await?);
        Pairings::open(
            backend,
            Keyring::parse(keys).unwrap(),
            100,
            Duration::from_secs(60),
            self.clock.clone(),
        )
        .await
    }
}

fn tokens(access: &str, refresh: Option<&str>, expires_at: i64) -> TokenSet {
    TokenSet {
        access_token: AccessToken::new(access),
        refresh_token: refresh.map(RefreshToken::new),
        access_expires_at: expires_at,
    }
}

#[tokio::test]
async fn save_get_survives_reopen_and_key_rotation() {
    let f = Fixture::new();
    let k1 = Keyring::generate_line("k1");
    let k2 = Keyring::generate_line("k2");
    let p = f.open(&k1).await.unwrap();
    p.save("alice", tokens("at-1", Some("rt-1"), NOW + 1800))
        .await
        .unwrap();
    drop(p);
    let p = f.open(&format!("{k2}\n{k1}")).await.unwrap();
    let got = p.get("alice").await.unwrap().unwrap();
    assert_eq!(got.tokens, tokens("at-1", Some("rt-1"), NOW + 1800));
    assert_eq!(got.version, 1);
}

#[tokio::test]
async fn rekey_moves_every_row_to_the_first_key_and_never_beats_a_refresh() {
    let f = Fixture::new();
    let (k1, k2) = (Keyring::generate_line("k1"), Keyring::generate_line("k2"));
    let old = f.open(&k1).await.unwrap();
    for n in 0..25 {
        old.save(
            &format!("user{n:02}"),
            tokens(&format!("at-{n}"), Some("rt"), NOW + 600),
        )
        .await
        .unwrap();
    }
    drop(old);
    let both = Arc::new(f.open(&format!("{k2}\n{k1}")).await.unwrap());
    // A first run stopped after one page of 10: those rows move, the rest wait.
    let first = both.rekey_page(None, 10).await.unwrap();
    assert_eq!((first.scanned, first.rekeyed, first.already), (10, 10, 0));
    // A refresh of user12 reads its row (k1, version 1) before the rekey run reaches it …
    let stale = both.backend.get("user12").await.unwrap().unwrap();
    // … the run goes on from the start and finds the first page done.
    let mut after = None;
    let mut total = RekeyPage::default();
    loop {
        let page = both.rekey_page(after.as_deref(), 10).await.unwrap();
        let Some(last) = page.last.clone() else { break };
        after = Some(last);
        total.rekeyed += page.rekeyed;
        total.already += page.already;
    }
    assert_eq!((total.rekeyed, total.already), (15, 10));
    // The refresh's compare-and-swap on the version it read still succeeds: rekeying did not
    // bump the version, so rotated tokens are never thrown away.
    let refreshed = both.seal(
        "user12",
        &tokens("at-new", Some("rt-new"), NOW + 1800),
        NOW,
        NOW,
        1,
    );
    assert!(both
        .backend
        .replace_if_version(refreshed, stale.version)
        .await
        .unwrap()
        .is_some());
    drop(both);
    // Every row opens with k2 alone now.
    let only_new = f.open(&k2).await.unwrap();
    let all = only_new.list_page(None, 100).await.unwrap();
    assert_eq!(all.len(), 25);
    assert!(all.iter().all(|p| p.key_id == "k2"));
    assert_eq!(
        only_new
            .get("user12")
            .await
            .unwrap()
            .unwrap()
            .tokens
            .access_token
            .expose(),
        "at-new"
    );
    assert_eq!(
        only_new
            .get("user03")
            .await
            .unwrap()
            .unwrap()
            .tokens
            .access_token
            .expose(),
        "at-3"
    );
}

#[tokio::test]
async fn missing_or_wrong_key_is_a_startup_error() {
    let f = Fixture::new();
    let k1 = Keyring::generate_line("k1");
    f.open(&k1)
        .await
        .unwrap()
        .save("alice", tokens("a", None, NOW))
        .await
        .unwrap();

    let other = Keyring::generate_line("k2");
    let err = f.open(&other).await.err().unwrap().to_string();
    assert!(
        err.contains("`k1`") && err.contains("not configured"),
        "{err}"
    );

    let impostor = Keyring::generate_line("k1");
    let err = f.open(&impostor).await.err().unwrap().to_string();
    assert!(err.contains("different material"), "{err}");

    // The pairing is still there for the right key.
    assert!(f
        .open(&k1)
        .await
        .unwrap()
        .get("alice")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn concurrent_expired_callers_refresh_once() {
    let f = Fixture::new();
    let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
    p.save("alice", tokens("old", Some("rt-old"), NOW - 1))
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (p, calls) = (p.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            p.fresh("alice", 60, None, move |old| {
                let calls = calls.clone();
                async move {
                    assert_eq!(old.refresh_token.unwrap().expose(), "rt-old");
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, RefreshFailure<()>>(tokens("new", Some("rt-new"), NOW + 1800))
                }
            })
            .await
            .map(|p| p.tokens.access_token.expose().to_string())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "new");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stored = p.load("alice").await.unwrap().unwrap();
    assert_eq!(
        stored.tokens.refresh_token.as_ref().unwrap().expose(),
        "rt-new"
    );
    assert_eq!(stored.version, 2);
}

#[tokio::test]
async fn rejected_grant_deletes_only_the_refreshed_version() {
    let f = Fixture::new();
    let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
    p.save("alice", tokens("old", Some("rt"), NOW - 1))
        .await
        .unwrap();
    let r = p
        .fresh("alice", 60, None, |_| async {
            Err::<TokenSet, _>(RefreshFailure::<()>::GrantRejected)
        })
        .await;
    assert!(matches!(r, Err(FreshError::Revoked)));
    assert!(p.get("alice").await.unwrap().is_none());

    // A re-pairing (or another instance's refresh) that lands while a refresh is failing is
    // kept, and used: the rejected grant was a stale one.
    p.save("bob", tokens("old", Some("rt"), NOW - 1))
        .await
        .unwrap();
    let during = p.clone();
    let r = p
        .fresh("bob", 60, None, move |_| async move {
            during
                .save("bob", tokens("repaired", Some("rt2"), NOW + 1800))
                .await
                .unwrap();
            Err::<TokenSet, _>(RefreshFailure::<()>::GrantRejected)
        })
        .await;
    assert_eq!(r.unwrap().tokens.access_token.expose(), "repaired");
    let kept = p.get("bob").await.unwrap().unwrap();
    assert_eq!(kept.tokens.access_token.expose(), "repaired");
}

#[tokio::test]
async fn other_failures_keep_the_pairing_and_missing_refresh_token_is_dead() {
    let f = Fixture::new();
    let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
    p.save("alice", tokens("old", Some("rt"), NOW - 1))
        .await
        .unwrap();
    let r = p
        .fresh("alice", 60, None, |_| async {
            Err::<TokenSet, _>(RefreshFailure::Other("down"))
        })
        .await;
    assert!(matches!(r, Err(FreshError::Refresh("down"))));
    assert!(p.get("alice").await.unwrap().is_some());

    p.save("carol", tokens("old", None, NOW - 1)).await.unwrap();
    let r = p
        .fresh("carol", 60, None, |_| async {
            Ok::<_, RefreshFailure<()>>(tokens("x", None, 0))
        })
        .await;
    assert!(matches!(r, Err(FreshError::Revoked)));
    assert!(p.get("carol").await.unwrap().is_none());
}

#[tokio::test]
async fn pair_states_are_single_use_expire_and_survive_reopen() {
    let f = Fixture::new();
    let keys = Keyring::generate_line("k");
    let p = f.open(&keys).await.unwrap();
    let pending = |user: &str, ttl: i64| PairState {
        user_id: user.into(),
        code_verifier: CodeVerifier::new("v".repeat(43)),
        return_to: Some("/x".into()),
        expires_at: NOW + ttl,
    };
    p.put_pair_state("state-a", &pending("alice", 600), 5)
        .await
        .unwrap();
    p.put_pair_state("state-b", &pending("bob", 10), 5)
        .await
        .unwrap();
    drop(p);
    let p = f.open(&keys).await.unwrap();
    assert_eq!(
        p.take_pair_state("state-a").await.unwrap(),
        TakenState::Valid(pending("alice", 600))
    );
    assert_eq!(
        p.take_pair_state("state-a").await.unwrap(),
        TakenState::Unknown,
        "replay"
    );
    f.clock.advance(11);
    assert_eq!(
        p.take_pair_state("state-b").await.unwrap(),
        TakenState::Expired
    );
    assert_eq!(
        p.take_pair_state("never-issued").await.unwrap(),
        TakenState::Unknown
    );
}

#[tokio::test]
async fn a_user_keeps_only_the_newest_pair_states() {
    let f = Fixture::new();
    let p = f.open(&Keyring::generate_line("k")).await.unwrap();
    let pending = |user: &str| PairState {
        user_id: user.into(),
        code_verifier: CodeVerifier::new("v".repeat(43)),
        return_to: None,
        expires_at: NOW + 600,
    };
    p.put_pair_state("bob-1", &pending("bob"), 3).await.unwrap();
    for n in 1..=7 {
        // All within one second: the order they were put in decides, not the clock.
        p.put_pair_state(&format!("alice-{n}"), &pending("alice"), 3)
            .await
            .unwrap();
    }
    p.put_pair_state("bob-2", &pending("bob"), 3).await.unwrap();
    for n in 1..=4 {
        assert_eq!(
            p.take_pair_state(&format!("alice-{n}")).await.unwrap(),
            TakenState::Unknown,
            "alice-{n} dropped"
        );
    }
    for id in ["alice-5", "alice-6", "alice-7", "bob-1", "bob-2"] {
        assert_eq!(
            p.take_pair_state(id).await.unwrap(),
            TakenState::Valid(pending(&id[..id.len() - 2])),
            "{id} kept"
        );
    }
    // Taken ones no longer count: three new ones keep one another.
    for n in 8..=10 {
        p.put_pair_state(&format!("alice-{n}"), &pending("alice"), 3)
            .await
            .unwrap();
    }
    assert!(matches!(
        p.take_pair_state("alice-8").await.unwrap(),
        TakenState::Valid(_)
    ));
}

#[tokio::test]
async fn a_pair_state_that_no_longer_opens_is_a_store_error() {
    let f = Fixture::new();
    let p = f.open(&Keyring::generate_line("old")).await.unwrap();
    let pending = PairState {
        user_id: "alice".into(),
        code_verifier: CodeVerifier::new("v".repeat(43)),
        return_to: None,
        expires_at: NOW + 600,
    };
    p.put_pair_state("state-a", &pending, 5).await.unwrap();
    drop(p);
    // The key that sealed it is retired before the callback comes back.
    let p = f.open(&Keyring::generate_line("new")).await.unwrap();
    assert!(matches!(
        p.take_pair_state("state-a").await,
        Err(StoreError::Sealing(_))
    ));
    // Spent all the same.
    assert_eq!(
        p.take_pair_state("state-a").await.unwrap(),
        TakenState::Unknown
    );
}

#[tokio::test]
async fn skew_and_stale_version_force_refresh() {
    let f = Fixture::new();
    let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
    let saved = p
        .save("alice", tokens("a1", Some("r1"), NOW + 100))
        .await
        .unwrap();
    let fresh = |at: &'static str| {
        move |_| async move { Ok::<_, RefreshFailure<()>>(tokens(at, Some("r"), NOW + 1800)) }
    };
    // 100 s left, skew 60: still good.
    assert_eq!(
        p.fresh("alice", 60, None, fresh("a2"))
            .await
            .unwrap()
            .tokens
            .access_token
            .expose(),
        "a1"
    );
    f.clock.advance(50);
    // 50 s left, inside the skew: refreshed.
    assert_eq!(
        p.fresh("alice", 60, None, fresh("a2"))
            .await
            .unwrap()
            .tokens
            .access_token
            .expose(),
        "a2"
    );
    // PKB rejected version 2's token: refreshed although not expired; an older stale version is ignored.
    assert_eq!(
        p.fresh("alice", 60, Some(saved.version), fresh("a3"))
            .await
            .unwrap()
            .tokens
            .access_token
            .expose(),
        "a2"
    );
    assert_eq!(
        p.fresh("alice", 60, Some(2), fresh("a3"))
            .await
            .unwrap()
            .tokens
            .access_token
            .expose(),
        "a3"
    );
}
