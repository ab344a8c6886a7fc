//! The behaviour every store shares, as checked on `MemoryKeyStore` in its unit
//! tests, written once and run against each database store.
//!
//! `store_cases!(fresh)` expands to one `#[tokio::test]` per case, each on the
//! store of `fresh().await`, which returns `(store, scratch)`; `scratch.finish()`
//! cleans up after the case.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use crossmodel_auth::{
    CreatedKey, KeyId, KeyManager, KeyState, KeyStore, NewKey, StoreErrorKind, UserState,
};

pub(crate) async fn with_key<S: KeyManager>(store: &S) -> CreatedKey {
    store
        .create_key(NewKey::for_user("alice").name("laptop"))
        .await
        .unwrap()
}

pub(crate) async fn created_keys_are_found_by_id_with_their_digest<S: KeyStore + KeyManager>(
    store: S,
) {
    let created = with_key(&store).await;

    let found = store.lookup(&created.key.id()).await.unwrap().unwrap();
    assert!(found.digest.ct_eq(&created.key.digest()));
    assert_eq!(found.name, "laptop");
    assert_eq!(found.user_id, "alice");
    assert_eq!(found.state, KeyState::Active);
    assert_eq!(found.user_state, UserState::Active);
}

pub(crate) async fn created_records_read_back_exactly<S: KeyStore + KeyManager>(store: S) {
    let expiry = SystemTime::now() + Duration::from_secs(3600);
    let new = NewKey::for_user("bob")
        .name("ci runner")
        .expires_at(expiry)
        .metadata(serde_json::json!({"team": "infra", "limits": [1, 2]}));

    let created = store.create_key(new).await.unwrap();

    let found = store.lookup(&created.key.id()).await.unwrap().unwrap();
    assert_eq!(*found, created.record);
    let expiry_error = found.expires_at.unwrap().duration_since(expiry);
    assert!(expiry_error.is_err() || expiry_error.unwrap() < Duration::from_micros(1));
    assert_eq!(store.list_keys().await.unwrap(), vec![created.record]);
}

pub(crate) async fn unknown_ids_are_not_found<S: KeyStore + KeyManager>(store: S) {
    let id = KeyId::parse("unknownKey12").unwrap();

    assert!(store.lookup(&id).await.unwrap().is_none());
    for err in [
        store.disable_key(&id).await.unwrap_err(),
        store.enable_key(&id).await.unwrap_err(),
        store.revoke_key(&id).await.unwrap_err(),
        store.delete_key(&id).await.unwrap_err(),
        store.set_expiry(&id, None).await.unwrap_err(),
        store.enable_user("nobody").await.unwrap_err(),
        store.disable_user("nobody").await.unwrap_err(),
    ] {
        assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
    }
}

pub(crate) async fn revoked_keys_cannot_be_enabled_or_disabled<S: KeyStore + KeyManager>(store: S) {
    let id = with_key(&store).await.key.id();

    store.revoke_key(&id).await.unwrap();
    store.revoke_key(&id).await.unwrap();

    let err = store.enable_key(&id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    let err = store.disable_key(&id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    let found = store.lookup(&id).await.unwrap().unwrap();
    assert_eq!(found.state, KeyState::Revoked);
}

pub(crate) async fn disabling_twice_succeeds_and_enable_restores<S: KeyStore + KeyManager>(
    store: S,
) {
    let id = with_key(&store).await.key.id();

    store.disable_key(&id).await.unwrap();
    store.disable_key(&id).await.unwrap();
    let state = store.lookup(&id).await.unwrap().unwrap().state;
    assert_eq!(state, KeyState::Disabled);

    store.enable_key(&id).await.unwrap();
    store.enable_key(&id).await.unwrap();
    let state = store.lookup(&id).await.unwrap().unwrap().state;
    assert_eq!(state, KeyState::Active);
}

pub(crate) async fn deleted_keys_are_gone<S: KeyStore + KeyManager>(store: S) {
    let id = with_key(&store).await.key.id();

    store.delete_key(&id).await.unwrap();

    assert!(store.lookup(&id).await.unwrap().is_none());
    assert!(store.list_keys().await.unwrap().is_empty());
    let err = store.delete_key(&id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    let users = store.list_users().await.unwrap();
    assert_eq!(users[0].key_count, 0);
}

pub(crate) async fn disabling_a_user_reaches_every_key_of_theirs<S: KeyStore + KeyManager>(
    store: S,
) {
    let first = with_key(&store).await;
    let second = store.create_key(NewKey::for_user("alice")).await.unwrap();
    let other = store.create_key(NewKey::for_user("bob")).await.unwrap();

    store.disable_user("alice").await.unwrap();
    store.disable_user("alice").await.unwrap();

    for id in [first.key.id(), second.key.id()] {
        let record = store.lookup(&id).await.unwrap().unwrap();
        assert_eq!(record.user_state, UserState::Disabled);
        assert_eq!(record.state, KeyState::Active);
    }
    let record = store.lookup(&other.key.id()).await.unwrap().unwrap();
    assert_eq!(record.user_state, UserState::Active);
    let err = store.disable_user("carol").await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound);

    store.enable_user("alice").await.unwrap();
    let record = store.lookup(&first.key.id()).await.unwrap().unwrap();
    assert_eq!(record.user_state, UserState::Active);
}

pub(crate) async fn new_keys_of_a_disabled_user_are_disabled_too<S: KeyStore + KeyManager>(
    store: S,
) {
    with_key(&store).await;
    store.disable_user("alice").await.unwrap();

    let created = store.create_key(NewKey::for_user("alice")).await.unwrap();

    assert_eq!(created.record.user_state, UserState::Disabled);
    let record = store.lookup(&created.key.id()).await.unwrap().unwrap();
    assert_eq!(record.user_state, UserState::Disabled);
}

pub(crate) async fn expiry_can_be_set_and_cleared<S: KeyStore + KeyManager>(store: S) {
    let id = with_key(&store).await.key.id();
    let past = SystemTime::now() - Duration::from_secs(1);

    store.set_expiry(&id, Some(past)).await.unwrap();
    let record = store.lookup(&id).await.unwrap().unwrap();
    assert!(record.is_expired_at(SystemTime::now()));

    store.set_expiry(&id, None).await.unwrap();
    let record = store.lookup(&id).await.unwrap().unwrap();
    assert!(!record.is_expired_at(SystemTime::now()));
    assert_eq!(record.expires_at, None);
}

pub(crate) async fn bad_input_is_refused_with_a_reason<S: KeyStore + KeyManager>(store: S) {
    for user in ["", "has space", &"u".repeat(129)] {
        let err = store.create_key(NewKey::for_user(user)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
        assert!(err.to_string().contains("user id"));
    }
    let new = NewKey::for_user("a").metadata(serde_json::json!([1]));
    assert!(store.create_key(new).await.is_err());
    let err = store.disable_user("has space").await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput);

    assert!(store.list_keys().await.unwrap().is_empty());
    assert!(store.list_users().await.unwrap().is_empty());
}

pub(crate) async fn uses_show_in_listings<S: KeyStore + KeyManager>(store: S) {
    let created = with_key(&store).await;
    let at = SystemTime::now();

    store.record_use(&created.key.id(), at);

    // Databases keep whole microseconds.
    let listed = store.list_keys().await.unwrap();
    let shown = listed[0].last_used_at.unwrap();
    assert!(at.duration_since(shown).unwrap() < Duration::from_micros(1));
    let users = store.list_users().await.unwrap();
    assert_eq!(users[0].key_count, 1);
}

pub(crate) async fn listings_are_oldest_first_and_users_by_id<S: KeyStore + KeyManager>(store: S) {
    let mut ids = Vec::new();
    for user in ["zoe", "adam", "mia", "adam"] {
        ids.push(
            store
                .create_key(NewKey::for_user(user))
                .await
                .unwrap()
                .key
                .id(),
        );
    }

    let listed: Vec<KeyId> = store
        .list_keys()
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, ids);
    let users = store.list_users().await.unwrap();
    let users: Vec<(&str, u64)> = users.iter().map(|u| (u.id.as_str(), u.key_count)).collect();
    assert_eq!(users, [("adam", 2), ("mia", 1), ("zoe", 1)]);
}

/// One `#[tokio::test]` per shared case, each on a store from `$fresh().await`.
macro_rules! store_cases {
    ($fresh:ident) => {
        store_cases!(@each $fresh;
            created_keys_are_found_by_id_with_their_digest,
            created_records_read_back_exactly,
            unknown_ids_are_not_found,
            revoked_keys_cannot_be_enabled_or_disabled,
            disabling_twice_succeeds_and_enable_restores,
            deleted_keys_are_gone,
            disabling_a_user_reaches_every_key_of_theirs,
            new_keys_of_a_disabled_user_are_disabled_too,
            expiry_can_be_set_and_cleared,
            bad_input_is_refused_with_a_reason,
            uses_show_in_listings,
            listings_are_oldest_first_and_users_by_id,
        );
    };
    (@each $fresh:ident; $($case:ident),* $(,)?) => {
        mod shared_cases {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, scratch) = super::$fresh().await;
                    crate::store_cases::$case(store).await;
                    scratch.finish().await;
                }
            )*
        }
    };
}
