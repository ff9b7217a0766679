//! The tab's identity key, kept in `localStorage` so a scout keeps its peer
//! id — and with it its reputation and credit — across visits.

use shared_proto::Keypair;

const STORAGE_KEY: &str = "shard.scout.key";
/// A tab asked to misbehave (tests, demonstrations) uses a key of its own, so
/// a link with `?misbehave=` can never get the person's own key banned.
const MISBEHAVING_STORAGE_KEY: &str = "shard.scout.key.misbehaving";

/// The stored key, or a new one (stored) when there is none or it is
/// unreadable. Without `localStorage` (private modes may refuse it) the key
/// lasts as long as the page.
pub fn load_or_create() -> Keypair {
    load_or_create_at(STORAGE_KEY)
}

/// The key a misbehaving tab uses: kept apart from [`load_or_create`]'s.
pub fn load_or_create_misbehaving() -> Keypair {
    load_or_create_at(MISBEHAVING_STORAGE_KEY)
}

fn load_or_create_at(storage_key: &str) -> Keypair {
    let storage = web_sys::window().and_then(|w| w.local_storage().ok().flatten());
    let stored = storage
        .as_ref()
        .and_then(|s| s.get_item(storage_key).ok().flatten())
        .and_then(|text| hex::decode(text.trim()).ok())
        .and_then(|bytes| Keypair::from_protobuf_encoding(&bytes).ok());
    if let Some(key) = stored {
        return key;
    }
    let key = Keypair::generate_ed25519();
    match (storage, key.to_protobuf_encoding()) {
        (Some(storage), Ok(bytes)) => {
            if let Err(e) = storage.set_item(storage_key, &hex::encode(bytes)) {
                log::warn!("cannot keep the scout key in localStorage: {e:?}");
            }
        }
        _ => log::warn!("no localStorage: this tab's scout key lasts until it closes"),
    }
    key
}
