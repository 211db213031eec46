//! Tokens this instance has verified, by their text: a client sends the same
//! token with every request, and verifying it again (base64, the claims'
//! JSON, the signature) is a sizeable share of a small request's CPU.
//!
//! Only tokens that passed every check go in, so no client can fill it with
//! tokens of its own making, and an entry answers only until its token
//! expires. The keys never change while a process runs, so nothing else can
//! make a verified token invalid.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use super::keys::VerifiedToken;

/// Shards: lookups from many tasks seldom wait for one lock.
const SHARDS: usize = 8;
/// Tokens a shard holds; a full shard starts again empty.
const PER_SHARD: usize = 1024;

pub struct VerifiedTokens {
    shards: Vec<Mutex<HashMap<Box<str>, VerifiedToken>>>,
    hasher: std::hash::RandomState,
    /// Seconds a token stays valid past its `exp` (the clock skew allowed).
    leeway: u64,
}

impl VerifiedTokens {
    pub fn new(leeway: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::hash::RandomState::new(),
            leeway,
        }
    }

    /// The token as verified before, if it has not expired since (`now`:
    /// seconds since the epoch).
    pub fn get(&self, token: &str, now: u64) -> Option<VerifiedToken> {
        let shard = self.shard(token);
        let mut entries = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let verified = entries.get(token)?;
        if now > verified.expires_at.saturating_add(self.leeway) {
            entries.remove(token);
            return None;
        }
        Some(verified.clone())
    }

    /// Remembers a token that passed every check.
    pub fn insert(&self, token: &str, verified: &VerifiedToken) {
        let mut entries = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= PER_SHARD {
            entries.clear();
        }
        entries.insert(token.into(), verified.clone());
    }

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, VerifiedToken>> {
        &self.shards[(self.hasher.hash_one(token) % SHARDS as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Permissions;

    fn verified(expires_at: u64) -> VerifiedToken {
        VerifiedToken {
            subject: "alice".to_owned(),
            permissions: Permissions::from_claim(&Default::default()).unwrap(),
            expires_at,
        }
    }

    #[test]
    fn a_token_answers_until_it_expires() {
        let tokens = VerifiedTokens::new(5);
        assert!(tokens.get("t", 100).is_none());
        tokens.insert("t", &verified(100));
        assert_eq!(tokens.get("t", 100).unwrap().subject, "alice");
        assert!(tokens.get("t", 105).is_some(), "within the leeway");
        assert!(tokens.get("t", 106).is_none(), "expired");
        assert!(tokens.get("t", 100).is_none(), "and forgotten");
        assert!(tokens.get("u", 100).is_none(), "another text");
    }

    #[test]
    fn a_full_shard_starts_again() {
        let tokens = VerifiedTokens::new(0);
        for n in 0..SHARDS * PER_SHARD * 2 {
            tokens.insert(&n.to_string(), &verified(u64::MAX));
        }
        let held: usize = tokens
            .shards
            .iter()
            .map(|shard| shard.lock().unwrap().len())
            .sum();
        assert!(held <= SHARDS * PER_SHARD, "{held}");
    }
}
