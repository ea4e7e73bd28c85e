//! Sealing a dealer's threshold subshares to their recipient, so that the
//! coordinator, which relays them, cannot read them (`docs/threshold.md`,
//! "The scheme", step 1).
//!
//! Construction (`ring` 0.17, and `x25519-dalek` for the recipient's keys):
//!
//! 1. The recipient draws one X25519 key per dealer ([`RecipientKeys`];
//!    RFC 7748, `x25519-dalek`; one per dealer and ceremony, kept in memory
//!    for the ceremony only) and publishes each public key signed with its
//!    certificate key (`consortia_proto::subshare_recipient_key_digest`), so
//!    that the coordinator cannot substitute its own.
//! 2. The dealer draws a fresh ephemeral key of its own per recipient, agrees
//!    on the shared secret with the recipient's key for it, and derives a
//!    ChaCha20-Poly1305 key (RFC 8439) with HKDF-SHA256 (RFC 5869): the salt
//!    binds the session and the task, the info the dealer, the recipient and
//!    both public keys ([`SealContext`]). Every key is used for one message
//!    only, so the all-zero nonce is safe; the associated data repeats the
//!    context, so a sealed box moved to another dealer, recipient, session or
//!    task does not open.
//! 3. The plaintext is every subshare the dealer gives that recipient,
//!    concatenated (their wire forms have a fixed length); it and the derived
//!    key are zeroized when dropped.
//!
//! A complaint about a box the dealer signed reveals the recipient's private
//! key for that dealer ([`RecipientKeys::reveal`]): anyone can then open the
//! box again ([`open_with`]) and check the subshares against the dealer's
//! signed commitments, which decides who lied (`docs/threshold.md`,
//! "Complaints"). The key was drawn for this dealer and ceremony only, and a
//! key whose dealing is complained about is abandoned, so revealing it
//! exposes nothing that is ever used.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Digest;
use zeroize::Zeroizing;

/// Length of an X25519 private key (the scalar as drawn, before clamping).
pub const PRIVATE_KEY_LEN: usize = 32;

/// Domain tag of the HKDF salt.
const SALT_TAG: &[u8] = b"consortia/subshare-seal/v1";

/// Length of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The largest sealed box accepted: every subshare one dealer gives one
/// holder of the largest committee (Secure128, `C(11, 5) = 462` subshares of
/// 65,584 bytes), plus the tag. Checked before anything is decrypted.
pub const MAX_SEALED_LEN: usize = 462 * 65_584 + 16;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The operating system's random generator failed.
    #[error("cannot draw an X25519 key: the operating system's random generator failed")]
    Random,
    /// No ephemeral key for this dealer (never drawn, or already used).
    #[error(
        "no subshare key for dealer {dealer}: each is used once; a repeated or unexpected \
         sealed box is refused (the coordinator restarts the ceremony)"
    )]
    NoKey {
        /// The dealer.
        dealer: u32,
    },
    /// A public key of the wrong length, or one X25519 refuses.
    #[error("the {whose} X25519 public key is not valid: the ceremony must start again")]
    BadPublicKey {
        /// Whose key.
        whose: &'static str,
    },
    /// A sealed box larger than any dealing.
    #[error("a sealed subshare box of {got} bytes exceeds the largest dealing ({max} bytes)")]
    TooLarge {
        /// Its length.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// Authentication failed.
    #[error(
        "the subshares sealed by dealer {dealer} do not open: altered in transit, or sealed to \
         another key or context; refuse the key naming the dealer"
    )]
    Open {
        /// The dealer.
        dealer: u32,
    },
}

/// Who seals to whom, for which key: bound into the key and the AEAD's
/// associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext {
    /// The key session.
    pub session: [u8; 32],
    /// The task's canonical hash.
    pub task_hash: [u8; 32],
    /// The dealer's party number.
    pub dealer: u32,
    /// The recipient's party number.
    pub recipient: u32,
}

impl SealContext {
    fn salt(&self) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(SALT_TAG);
        h.update(self.session);
        h.update(self.task_hash);
        h.finalize().into()
    }

    fn info(&self, dealer_key: &[u8], recipient_key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 2 * PUBLIC_KEY_LEN);
        out.extend_from_slice(&self.dealer.to_le_bytes());
        out.extend_from_slice(&self.recipient.to_le_bytes());
        out.extend_from_slice(dealer_key);
        out.extend_from_slice(recipient_key);
        out
    }

    fn aad(&self, dealer_key: &[u8], recipient_key: &[u8]) -> Vec<u8> {
        let mut out = self.salt().to_vec();
        out.extend_from_slice(&self.info(dealer_key, recipient_key));
        out
    }

    /// The AEAD key from the X25519 shared secret.
    fn key(
        &self,
        shared: &[u8],
        dealer_key: &[u8],
        recipient_key: &[u8],
    ) -> Result<LessSafeKey, ()> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &self.salt());
        let info = self.info(dealer_key, recipient_key);
        let info = [info.as_slice()];
        let prk = salt.extract(shared);
        let okm = prk.expand(&info, &CHACHA20_POLY1305).map_err(|_| ())?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

/// A dealer's subshares for one recipient, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The dealer's ephemeral X25519 public key.
    pub dealer_key: [u8; PUBLIC_KEY_LEN],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// Seals `plaintext` (the concatenated subshares) to `recipient_key`, the
/// recipient's signed ephemeral key for this dealer (its signature checked by
/// the caller).
pub fn seal(
    ctx: &SealContext,
    recipient_key: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    if recipient_key.len() != PUBLIC_KEY_LEN {
        return Err(SealError::BadPublicKey {
            whose: "recipient's",
        });
    }
    let rng = SystemRandom::new();
    let mine = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| SealError::Random)?;
    let mine_public = mine.compute_public_key().map_err(|_| SealError::Random)?;
    let mut dealer_key = [0u8; PUBLIC_KEY_LEN];
    dealer_key.copy_from_slice(mine_public.as_ref());
    let key = agreement::agree_ephemeral(
        mine,
        &UnparsedPublicKey::new(&X25519, recipient_key),
        |shared| ctx.key(shared, &dealer_key, recipient_key),
    )
    .map_err(|_| SealError::BadPublicKey {
        whose: "recipient's",
    })?
    .map_err(|()| SealError::Random)?;
    let mut buffer = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; aead::NONCE_LEN]),
        Aad::from(ctx.aad(&dealer_key, recipient_key)),
        &mut buffer,
    )
    .map_err(|_| SealError::Random)?;
    Ok(Sealed {
        dealer_key,
        ciphertext: buffer,
    })
}

/// A recipient's X25519 keys, one per dealer; each opens one sealed box and
/// can then only be revealed for a complaint. Held in memory for the
/// ceremony only; zeroized when dropped.
pub struct RecipientKeys {
    keys: BTreeMap<u32, x25519_dalek::StaticSecret>,
    spent: BTreeMap<u32, x25519_dalek::StaticSecret>,
}

impl std::fmt::Debug for RecipientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKeys")
            .field("dealers", &self.keys.keys().collect::<Vec<_>>())
            .field("spent", &self.spent.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The X25519 public key of the private key `private` (RFC 7748 §6.1).
pub fn public_of(private: &[u8; PRIVATE_KEY_LEN]) -> [u8; PUBLIC_KEY_LEN] {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// Opens `sealed` with the recipient's private key `private` for
/// `ctx.dealer`: what the recipient does, and what a judge of its complaint
/// does with the key it revealed. The size is checked first.
pub fn open_with(
    private: &[u8; PRIVATE_KEY_LEN],
    ctx: &SealContext,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    open_secret(&x25519_dalek::StaticSecret::from(*private), ctx, sealed)
}

fn open_secret(
    secret: &x25519_dalek::StaticSecret,
    ctx: &SealContext,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.ciphertext.len() > MAX_SEALED_LEN {
        return Err(SealError::TooLarge {
            got: sealed.ciphertext.len(),
            max: MAX_SEALED_LEN,
        });
    }
    let public = x25519_dalek::PublicKey::from(secret).to_bytes();
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(sealed.dealer_key));
    // RFC 7748 §6.1: an all-zero shared secret (a small-order dealer key) is
    // refused, as ring refuses it on the sealing side.
    if !shared.was_contributory() {
        return Err(SealError::BadPublicKey { whose: "dealer's" });
    }
    let key = ctx
        .key(shared.as_bytes(), &sealed.dealer_key, &public)
        .map_err(|()| SealError::Open { dealer: ctx.dealer })?;
    let mut buffer = Zeroizing::new(sealed.ciphertext.clone());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; aead::NONCE_LEN]),
            Aad::from(ctx.aad(&sealed.dealer_key, &public)),
            &mut buffer,
        )
        .map_err(|_| SealError::Open { dealer: ctx.dealer })?
        .len();
    buffer.truncate(len);
    Ok(buffer)
}

impl RecipientKeys {
    /// Draws a key for every dealer in `dealers` (32 bytes from the operating
    /// system's generator each, clamped by X25519).
    pub fn new(dealers: impl IntoIterator<Item = u32>) -> Result<Self, SealError> {
        let rng = SystemRandom::new();
        let mut keys = BTreeMap::new();
        for dealer in dealers {
            let mut bytes = Zeroizing::new([0u8; PRIVATE_KEY_LEN]);
            rng.fill(bytes.as_mut()).map_err(|_| SealError::Random)?;
            keys.insert(dealer, x25519_dalek::StaticSecret::from(*bytes));
        }
        Ok(Self {
            keys,
            spent: BTreeMap::new(),
        })
    }

    /// The public key to publish (signed) for `dealer`.
    pub fn public_for(&self, dealer: u32) -> Option<[u8; PUBLIC_KEY_LEN]> {
        self.keys
            .get(&dealer)
            .or_else(|| self.spent.get(&dealer))
            .map(|k| x25519_dalek::PublicKey::from(k).to_bytes())
    }

    /// Opens the box `ctx.dealer` sealed to this recipient, using up that
    /// dealer's key (a second box of that dealer is refused). The size is
    /// checked before anything else.
    pub fn open(
        &mut self,
        ctx: &SealContext,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.ciphertext.len() > MAX_SEALED_LEN {
            return Err(SealError::TooLarge {
                got: sealed.ciphertext.len(),
                max: MAX_SEALED_LEN,
            });
        }
        let secret = self
            .keys
            .remove(&ctx.dealer)
            .ok_or(SealError::NoKey { dealer: ctx.dealer })?;
        let opened = open_secret(&secret, ctx, sealed);
        self.spent.insert(ctx.dealer, secret);
        opened
    }

    /// The private key drawn for `dealer`, to reveal in a complaint about the
    /// box that dealer signed; the key is gone from this set afterwards.
    pub fn reveal(&mut self, dealer: u32) -> Option<Zeroizing<[u8; PRIVATE_KEY_LEN]>> {
        self.spent
            .remove(&dealer)
            .or_else(|| self.keys.remove(&dealer))
            .map(|k| Zeroizing::new(k.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dealer: u32, recipient: u32) -> SealContext {
        SealContext {
            session: [7; 32],
            task_hash: [9; 32],
            dealer,
            recipient,
        }
    }

    #[test]
    fn a_sealed_box_opens_once_for_its_recipient_and_context_only() {
        let secret = b"the subshares of dealer 1 for holder 2".to_vec();
        let mut keys = RecipientKeys::new([0, 1, 3]).unwrap();
        let public = keys.public_for(1).unwrap();
        let sealed = seal(&ctx(1, 2), &public, &secret).unwrap();
        assert!(!sealed.ciphertext.windows(8).any(|w| w == &secret[..8]));
        // Another context (dealer, recipient, session, task) does not open,
        // and using the wrong dealer's key spends that key.
        let mut other = RecipientKeys::new([1]).unwrap();
        assert_eq!(
            other.open(&ctx(1, 2), &sealed),
            Err(SealError::Open { dealer: 1 })
        );
        let changes: [fn(&mut SealContext); 3] = [
            |c| c.session[0] ^= 1,
            |c| c.task_hash[0] ^= 1,
            |c| c.recipient = 4,
        ];
        for change in changes {
            let mut k = RecipientKeys::new([1]).unwrap();
            let mut moved = ctx(1, 2);
            change(&mut moved);
            let s = seal(&ctx(1, 2), &k.public_for(1).unwrap(), &secret).unwrap();
            assert_eq!(k.open(&moved, &s), Err(SealError::Open { dealer: 1 }));
        }
        // A flipped bit does not open.
        let mut k = RecipientKeys::new([1]).unwrap();
        let mut s = seal(&ctx(1, 2), &k.public_for(1).unwrap(), &secret).unwrap();
        s.ciphertext[3] ^= 1;
        assert_eq!(k.open(&ctx(1, 2), &s), Err(SealError::Open { dealer: 1 }));
        // The right recipient opens it, once.
        assert_eq!(keys.open(&ctx(1, 2), &sealed).unwrap().as_slice(), secret);
        assert_eq!(
            keys.open(&ctx(1, 2), &sealed),
            Err(SealError::NoKey { dealer: 1 })
        );
        // Sealed to dealer 0's key but presented as dealer 3's: no.
        let to_zero = seal(&ctx(3, 2), &keys.public_for(0).unwrap(), &secret).unwrap();
        assert_eq!(
            keys.open(&ctx(3, 2), &to_zero),
            Err(SealError::Open { dealer: 3 })
        );
    }

    #[test]
    fn a_revealed_key_opens_the_box_for_anyone_and_matches_the_published_key() {
        let secret = b"subshares".to_vec();
        let mut keys = RecipientKeys::new([1]).unwrap();
        let public = keys.public_for(1).unwrap();
        let sealed = seal(&ctx(1, 2), &public, &secret).unwrap();
        assert_eq!(keys.open(&ctx(1, 2), &sealed).unwrap().as_slice(), secret);
        let private = keys.reveal(1).unwrap();
        assert_eq!(public_of(&private), public);
        assert_eq!(
            open_with(&private, &ctx(1, 2), &sealed).unwrap().as_slice(),
            secret
        );
        assert_eq!(
            open_with(&private, &ctx(1, 3), &sealed),
            Err(SealError::Open { dealer: 1 })
        );
        assert!(keys.reveal(1).is_none());
        // Another key does not open it.
        let other = RecipientKeys::new([1]).unwrap().reveal(1).unwrap();
        assert_eq!(
            open_with(&other, &ctx(1, 2), &sealed),
            Err(SealError::Open { dealer: 1 })
        );
    }

    #[test]
    fn oversized_boxes_and_bad_keys_are_refused_before_decryption() {
        let mut keys = RecipientKeys::new([0]).unwrap();
        let big = Sealed {
            dealer_key: [1; 32],
            ciphertext: vec![0; MAX_SEALED_LEN + 1],
        };
        assert!(matches!(
            keys.open(&ctx(0, 1), &big),
            Err(SealError::TooLarge { .. })
        ));
        // The size check left the key in place.
        assert!(keys.public_for(0).is_some());
        assert!(matches!(
            seal(&ctx(0, 1), &[1; 31], b"x"),
            Err(SealError::BadPublicKey { .. })
        ));
    }

    #[test]
    fn the_size_limit_fits_the_largest_dealing() {
        use consortia_he::HeParams;
        use consortia_he::threshold::{MAX_THRESHOLD_PARTIES, Subshare, Threshold};
        let largest = (2..=MAX_THRESHOLD_PARTIES)
            .flat_map(|n| (2..=n).map(move |t| (n, t)))
            .map(|(n, t)| {
                let th = Threshold::new(n, t).unwrap();
                th.held_by(consortia_he::PartyId(0)).count()
                    * Subshare::encoded_len(HeParams::Secure128)
            })
            .max()
            .unwrap();
        assert_eq!(largest + 16, MAX_SEALED_LEN);
    }
}
