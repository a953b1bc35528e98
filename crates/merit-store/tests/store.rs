//! Store tests; run on PostgreSQL too when `MERIT_TEST_DATABASE_URL` is set.

use merit_core::{Kind, Policy, Review, Status};
use merit_store::testing::fresh_store;
use merit_store::{ContributionFilter, DatanetPatch, NewDatanet, NewRow, Role, Store, StoreError, Submission};

fn row(text: &str, sig: Vec<u32>) -> NewRow {
    NewRow {
        content: serde_json::json!({ "text": text }).to_string(),
        text_hash: merit_core::sha256_hex(text.as_bytes()),
        band_keys: sig
            .chunks(8)
            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_mul(31).wrapping_add(v as u64)))
            .collect(),
        minhash: sig,
        score: 0.9,
    }
}

fn submission(rows: Vec<NewRow>) -> Submission {
    Submission {
        filename: "a.jsonl".into(),
        format: Some(merit_core::Format::Jsonl),
        bytes: 100,
        sha256: "0".repeat(64),
        rows,
        reasons: vec![],
        gate_version: "test".into(),
    }
}

fn new_datanet(name: &str, policy: Policy) -> NewDatanet {
    NewDatanet {
        name: name.into(),
        policy,
        summary: "s".into(),
        description: "d".into(),
        tags: vec!["qa".into()],
        publish: true,
    }
}

#[tokio::test]
async fn users_tokens_and_datanets() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let (ann, token) = store.create_user("ann", false).await.unwrap();
    assert!(token.starts_with("mrt_"));
    assert_eq!(store.user_by_token(&token).await.unwrap().unwrap().id, ann.id);
    assert!(store.user_by_token("mrt_nope").await.unwrap().is_none());
    assert!(matches!(store.create_user("ann", false).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.create_user("Bad Name", false).await, Err(StoreError::Invalid(_))));

    let mut nd = new_datanet("qa", Policy::default_for(Kind::Text));
    nd.publish = false;
    let d = store.create_datanet(&ann, nd.clone()).await.unwrap();
    assert!(!d.published);
    assert!(matches!(store.create_datanet(&ann, nd).await, Err(StoreError::Conflict(_))));
    // Before publishing the policy may change, but never the kind.
    let mut p = Policy::default_for(Kind::Text);
    p.review = Review::Owner;
    let d = store.update_datanet(&d, DatanetPatch { policy: Some(p), ..Default::default() }).await.unwrap();
    assert_eq!(d.policy.review, Review::Owner);
    let bad = DatanetPatch { policy: Some(Policy::default_for(Kind::Image)), ..Default::default() };
    assert!(matches!(store.update_datanet(&d, bad).await, Err(StoreError::Invalid(_))));
    let d = store.publish_datanet(&d).await.unwrap();
    let again = DatanetPatch { policy: Some(Policy::default_for(Kind::Text)), ..Default::default() };
    assert!(matches!(store.update_datanet(&d, again).await, Err(StoreError::Invalid(_))));
    let d = store.update_datanet(&d, DatanetPatch { summary: Some("new".into()), ..Default::default() }).await.unwrap();
    assert_eq!(d.summary, "new");
    let (bob, _) = store.create_user("bob", false).await.unwrap();
    assert_eq!(store.role(&d, &bob).await.unwrap(), None);
    store.set_role(&d, &bob, Some(Role::Curator)).await.unwrap();
    assert_eq!(store.role(&d, &bob).await.unwrap(), Some(Role::Curator));
    assert_eq!(store.role(&d, &ann).await.unwrap(), Some(Role::Owner));
}

#[tokio::test]
async fn versions_duplicates_and_review() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let (ann, _) = store.create_user("ann", false).await.unwrap();
    let (bob, _) = store.create_user("bob", false).await.unwrap();
    let d = store.create_datanet(&ann, new_datanet("qa", Policy::default_for(Kind::Text))).await.unwrap();

    let sig_a: Vec<u32> = (0..112).collect();
    let c1 = store
        .submit(
            &d,
            &bob,
            submission(vec![row("first", sig_a.clone()), row("second", (200..312).collect())]),
            staged(&store, b"x"),
        )
        .await
        .unwrap();
    assert_eq!(c1.status, Status::Accepted);
    assert_eq!(c1.version, Some(1));
    let v1 = store.version(&d, 1).await.unwrap().unwrap();
    assert_eq!(v1.row_count, 2);
    let leaves: Vec<_> = store
        .rows(&d, &v1, 0, 10, None)
        .await
        .unwrap()
        .iter()
        .map(|r| merit_ledger::leaf_hash(r.content.to_string().as_bytes()))
        .collect();
    assert_eq!(v1.root, hex::encode(merit_ledger::root(&leaves)));

    // Exact duplicate → rejected, nothing added.
    let c2 = store
        .submit(&d, &bob, submission(vec![row("first", (500..612).collect())]), staged(&store, b"y"))
        .await
        .unwrap();
    assert_eq!(c2.status, Status::Rejected);
    assert_eq!(c2.reasons[0].gate, "exact_duplicate");
    // Near duplicate (100 of 112 positions equal) → rejected.
    let mut near = sig_a.clone();
    for v in near.iter_mut().take(12) {
        *v += 10_000;
    }
    let c3 = store.submit(&d, &bob, submission(vec![row("first, nearly", near)]), staged(&store, b"z")).await.unwrap();
    assert_eq!(c3.status, Status::Rejected);
    assert_eq!(c3.reasons[0].gate, "near_duplicate");
    assert!(store.version(&d, 2).await.unwrap().is_none());

    // A second accepted file makes version 2; version 1 is unchanged.
    let c4 = store
        .submit(&d, &ann, submission(vec![row("third", (700..812).collect())]), staged(&store, b"w"))
        .await
        .unwrap();
    assert_eq!(c4.version, Some(2));
    let v2 = store.version(&d, 2).await.unwrap().unwrap();
    assert_eq!((v2.row_count, v2.byte_count), (3, 200));
    assert_eq!(store.version(&d, 1).await.unwrap().unwrap().root, v1.root);
    assert_eq!(store.rows(&d, &v1, 0, 10, None).await.unwrap().len(), 2);
    assert_eq!(store.rows(&d, &v2, 0, 10, Some("THIRD")).await.unwrap().len(), 1);

    let board = merit_core::score::leaderboard(&store.outcomes(Some(&d)).await.unwrap());
    // Equal scores (0.9 each): ann's 1 of 1 beats bob's 1 of 3 on the Wilson bound.
    assert_eq!(board[0].contributor, "ann");
    assert_eq!(board[1].contributor, "bob");
    assert_eq!((board[1].accepted, board[1].rejected, board[1].submitted), (1, 2, 3));

    // Review: pending, then approved into a version, or rejected with a reason.
    let mut p = Policy::default_for(Kind::Text);
    p.review = Review::Owner;
    let r = store.create_datanet(&ann, new_datanet("reviewed", p)).await.unwrap();
    let c5 = store
        .submit(&r, &bob, submission(vec![row("pending row", (900..1012).collect())]), staged(&store, b"p"))
        .await
        .unwrap();
    assert_eq!(c5.status, Status::Pending);
    assert!(store.latest_version(&r).await.unwrap().is_none());
    let pending = store
        .contributions(&r, &ContributionFilter { status: Some(Status::Pending), ..Default::default() }, 10, 0)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let c5 = store.approve(&r, c5.id, &ann, submission(vec![row("pending row", (900..1012).collect())])).await.unwrap();
    assert_eq!((c5.status, c5.version), (Status::Accepted, Some(1)));
    assert!(matches!(store.approve(&r, c5.id, &ann, submission(vec![])).await, Err(StoreError::Conflict(_))));
    let c6 = store
        .submit(&r, &bob, submission(vec![row("other", (1100..1212).collect())]), staged(&store, b"q"))
        .await
        .unwrap();
    let c6 = store.reject(&r, c6.id, &ann, "off topic").await.unwrap();
    assert_eq!(c6.status, Status::Rejected);
    assert_eq!(c6.reasons[0].gate, "review");
    assert_eq!(c6.review_reason.as_deref(), Some("off topic"));
}

#[tokio::test]
async fn daily_limits_hold_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let (ann, _) = store.create_user("ann", false).await.unwrap();
    let mut p = Policy::default_for(Kind::Text);
    p.limits.user_files_per_day = 5;
    p.gates.exact_duplicates = false;
    let d = store.create_datanet(&ann, new_datanet("lim", p)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let (store, d, ann) = (store.clone(), d.clone(), ann.clone());
        tasks.push(tokio::spawn(async move {
            store
                .submit(
                    &d,
                    &ann,
                    submission(vec![row(&format!("row {i}"), (i * 1000..i * 1000 + 112).collect())]),
                    staged(&store, b"c"),
                )
                .await
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Limit { name, .. }) => {
                assert_eq!(name.as_str(), "user_files_per_day");
                limited += 1
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, limited), (5, 15));
    assert_eq!(store.latest_version(&d).await.unwrap().unwrap().row_count, 5);
}

#[tokio::test]
async fn every_change_appends_its_ledger_leaves() {
    use merit_ledger::event::Event;
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let (ann, _) = store.create_user("ann", false).await.unwrap();
    let (bob, _) = store.create_user("bob", false).await.unwrap();
    assert_eq!(store.ledger_size().await.unwrap(), 0);
    let d = store.create_datanet(&ann, new_datanet("qa", Policy::default_for(Kind::Text))).await.unwrap();
    store.submit(&d, &bob, submission(vec![row("one", (0..112).collect())]), staged(&store, b"1")).await.unwrap();
    store.submit(&d, &bob, submission(vec![row("one", (0..112).collect())]), staged(&store, b"1")).await.unwrap();
    let kinds: Vec<&str> = store
        .ledger_entries(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|(_, leaf)| Event::from_leaf(leaf).unwrap().kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "datanet.created",
            "datanet.policy",
            "contribution.submitted",
            "contribution.verdict",
            "datanet.version",
            "contribution.submitted",
            "contribution.verdict"
        ]
    );
    let leaves: Vec<_> =
        store.ledger_entries(0, 100).await.unwrap().iter().map(|(_, l)| merit_ledger::leaf_hash(l)).collect();
    let n = leaves.len() as u64;
    for size in 1..=n {
        let root = store.ledger_root(size).await.unwrap();
        assert_eq!(root, merit_ledger::root(&leaves[..size as usize]));
        for i in 0..size {
            let p = store.ledger_inclusion_proof(i, size).await.unwrap();
            merit_ledger::proof::verify_inclusion(i, size, &leaves[i as usize], &p, &root).unwrap();
        }
        let old = store.ledger_root(size / 2).await.unwrap();
        let c = store.ledger_consistency_proof(size / 2, size).await.unwrap();
        merit_ledger::proof::verify_consistency(size / 2, size, &old, &root, &c).unwrap();
    }
    assert!(matches!(store.ledger_root(n + 1).await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn batched_appends_match_the_reference_tree() {
    use merit_ledger::event::Event;
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let mut leaves = Vec::new();
    let mut n = 0i64;
    for batch in [1usize, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 600] {
        let events: Vec<Event> = (0..batch)
            .map(|_| {
                n += 1;
                Event::DatanetPolicy { datanet: format!("d{n}"), policy_hash: "00".into(), at: n }
            })
            .collect();
        leaves.extend(events.iter().map(|e| merit_ledger::leaf_hash(&e.to_leaf())));
        store.ledger_append(&events).await.unwrap();
        let size = leaves.len() as u64;
        let root = store.ledger_root(size).await.unwrap();
        assert_eq!(root, merit_ledger::root(&leaves), "size {size}");
        for i in [0, size / 3, size - 1] {
            let p = store.ledger_inclusion_proof(i, size).await.unwrap();
            merit_ledger::proof::verify_inclusion(i, size, &leaves[i as usize], &p, &root).unwrap();
        }
    }
}

#[tokio::test]
async fn runs_queue_claims_each_run_once_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let (ann, _) = store.create_user("ann", false).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(store.create_run(&ann, &serde_json::json!({ "rank": i }), 100).await.unwrap().id);
    }
    let r = store.run(ids[0]).await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.owner.as_str(), r.config["rank"].as_i64()), ("queued", "ann", Some(0)));
    // Six workers race for five runs (one is stopped before anybody claims it).
    let stopped = store.request_stop(ids[5]).await.unwrap();
    assert_eq!(stopped.status, "stopped");
    assert!(matches!(store.request_stop(ids[5]).await, Err(StoreError::Conflict(_))));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.claim_run(&format!("host:{w}")).await.unwrap() }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            assert_eq!(r.status, "running");
            claimed.push(r.id);
        }
    }
    claimed.sort();
    assert_eq!(claimed, ids[..5].to_vec(), "every queued run claimed exactly once");
    // A running run is flagged; its worker ends it.
    let r = store.request_stop(ids[0]).await.unwrap();
    assert!(r.stop_requested && r.status == "running");
    store.finish_run(ids[0], "stopped", Some(&serde_json::json!({ "steps": 3 })), None).await.unwrap();
    let r = store.run(ids[0]).await.unwrap().unwrap();
    assert!(r.ended() && r.summary.unwrap()["steps"] == 3 && r.finished_at.is_some());
    // A restarted machine marks what it left running as interrupted.
    assert_eq!(store.interrupt_runs("host:").await.unwrap(), 4);
    assert!(matches!(store.request_stop(999).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.runs(Some(&ann), 0, 100).await.unwrap().len(), 6);
    assert_eq!(store.runs(None, 0, 2).await.unwrap()[0].id, ids[5]);
}

/// Issue 14: tokens have a lifecycle: labels, expiry, revocation.
#[tokio::test]
async fn tokens_expire_and_are_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let (ann, first) = store.create_user("ann", false).await.unwrap();
    let (bob, _) = store.create_user("bob", false).await.unwrap();
    let soon = store.issue_token(&ann, "ci", Some(merit_store::now_ms() + 300)).await.unwrap();
    assert!(store.issue_token(&ann, "past", Some(merit_store::now_ms() - 1)).await.is_err());
    assert!(store.issue_token(&ann, &"x".repeat(101), None).await.is_err());
    assert_eq!(store.user_by_token(&soon).await.unwrap().unwrap().name, "ann");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(store.user_by_token(&soon).await.unwrap().is_none(), "expired");
    let list = store.tokens(&ann).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|t| t.active).count(), 1);
    assert!(list.iter().any(|t| t.label == "ci" && !t.active && t.revoked_at.is_none()));
    // Revoked by id or by the token itself; nobody revokes another's.
    let id = list.iter().find(|t| t.active).unwrap().id.clone();
    assert!(matches!(store.revoke_token(&bob, &id).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.user_by_token(&first).await.unwrap().unwrap().name, "ann");
    let revoked = store.revoke_token(&ann, &first).await.unwrap();
    assert_eq!(revoked.id, id);
    assert!(store.user_by_token(&first).await.unwrap().is_none(), "revoked");
    assert!(store.tokens(&ann).await.unwrap().iter().all(|t| !t.active));
    // Live tokens are bounded per account (bob has his first).
    for _ in 1..merit_store::MAX_LIVE_TOKENS {
        store.issue_token(&bob, "", None).await.unwrap();
    }
    assert!(matches!(store.issue_token(&bob, "", None).await, Err(StoreError::Invalid(_))));
}

fn staged(store: &Store, bytes: &[u8]) -> merit_store::Staged {
    store.blobs().stage_bytes(bytes).unwrap()
}
