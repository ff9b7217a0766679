//! Signatures with libp2p ed25519 identity keys.
//!
//! A signed message carries its signature in one of its own fields. The signed
//! bytes are a domain string naming the message type, a zero byte, and the
//! message's protobuf encoding with the signature field empty. The domain keeps a
//! signature made for one kind of message from being accepted as another.
//!
//! Three messages are signed:
//! - [`pb::OracleCertificate`]: by the network key, vouching for an oracle key;
//! - [`pb::WorkResult`]: by the scout (or oracle) that produced the tokens;
//! - [`pb::ResultBroadcast`]: by the oracle whose certificate it carries.

use libp2p::PeerId;
use libp2p::identity::{DecodingError, Keypair, PublicKey, SigningError};
use prost::Message;
use thiserror::Error;

use crate::pb;

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a signature or certificate was not accepted.
#[derive(Debug, Error)]
pub enum SignatureError {
    /// The signature does not verify under the expected key.
    #[error("signature does not verify")]
    BadSignature,
    /// A key field does not decode as a libp2p public key.
    #[error("malformed public key: {0}")]
    MalformedKey(DecodingError),
    /// The key could not sign (only non-ed25519 key types can fail here).
    #[error("signing failed: {0}")]
    Signing(SigningError),
    /// The certificate is signed by a key other than the network key we trust.
    #[error("certificate is from an untrusted network key")]
    UntrustedNetworkKey,
    /// The certificate's window has not started.
    #[error("certificate not valid before {not_before_ms} (now {now_ms})")]
    NotYetValid {
        /// Start of validity, unix ms.
        not_before_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// The certificate's window has ended.
    #[error("certificate expired at {not_after_ms} (now {now_ms})")]
    CertificateExpired {
        /// End of validity, unix ms.
        not_after_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// The message came from a peer other than the certified oracle.
    #[error("published by {publisher}, but certified for {certified}")]
    WrongPublisher {
        /// Who sent it.
        publisher: Box<PeerId>,
        /// Who the certificate names.
        certified: Box<PeerId>,
    },
    /// A message that must carry a certificate carries none.
    #[error("no oracle certificate attached")]
    MissingCertificate,
}

impl From<DecodingError> for SignatureError {
    fn from(e: DecodingError) -> Self {
        SignatureError::MalformedKey(e)
    }
}

impl From<SigningError> for SignatureError {
    fn from(e: SigningError) -> Self {
        SignatureError::Signing(e)
    }
}

/// A message with a signature field of its own.
pub trait Signed: Message + Clone {
    /// Domain separation string, unique per message type and protocol major version.
    const DOMAIN: &'static str;
    /// The signature field.
    fn signature(&self) -> &[u8];
    /// Sets the signature field.
    fn set_signature(&mut self, signature: Vec<u8>);

    /// The bytes a signature covers.
    fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.set_signature(Vec::new());
        let mut out = Vec::with_capacity(Self::DOMAIN.len() + 1 + unsigned.encoded_len());
        out.extend_from_slice(Self::DOMAIN.as_bytes());
        out.push(0);
        out.extend(unsigned.encode_to_vec());
        out
    }

    /// Signs the message in place with `key`.
    fn sign(&mut self, key: &Keypair) -> Result<(), SignatureError> {
        let signature = key.sign(&self.signing_bytes())?;
        self.set_signature(signature);
        Ok(())
    }

    /// Checks that the signature is `signer`'s.
    fn verify_signature(&self, signer: &PublicKey) -> Result<(), SignatureError> {
        if signer.verify(&self.signing_bytes(), self.signature()) {
            Ok(())
        } else {
            Err(SignatureError::BadSignature)
        }
    }
}

impl Signed for pb::OracleCertificate {
    const DOMAIN: &'static str = "shard/1/oracle-certificate";
    fn signature(&self) -> &[u8] {
        &self.signature
    }
    fn set_signature(&mut self, signature: Vec<u8>) {
        self.signature = signature;
    }
}

impl Signed for pb::WorkResult {
    const DOMAIN: &'static str = "shard/1/work-result";
    fn signature(&self) -> &[u8] {
        &self.proof
    }
    fn set_signature(&mut self, signature: Vec<u8>) {
        self.proof = signature;
    }
}

impl Signed for pb::ResultBroadcast {
    const DOMAIN: &'static str = "shard/1/result-broadcast";
    fn signature(&self) -> &[u8] {
        &self.verification_signature
    }
    fn set_signature(&mut self, signature: Vec<u8>) {
        self.verification_signature = signature;
    }
}

impl pb::OracleCertificate {
    /// A certificate, signed by `network_key`, that `oracle` is an oracle from
    /// `not_before_ms` to `not_after_ms` (unix ms).
    pub fn issue(
        network_key: &Keypair,
        oracle: &PublicKey,
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Result<Self, SignatureError> {
        let mut cert = pb::OracleCertificate {
            oracle_public_key: oracle.encode_protobuf(),
            network_public_key: network_key.public().encode_protobuf(),
            not_before_ms,
            not_after_ms,
            signature: Vec::new(),
        };
        cert.sign(network_key)?;
        Ok(cert)
    }

    /// Checks the certificate against the network key we trust and our clock;
    /// returns the certified oracle key.
    pub fn verify(
        &self,
        network_key: &PublicKey,
        now_ms: u64,
    ) -> Result<PublicKey, SignatureError> {
        let claimed_network = PublicKey::try_decode_protobuf(&self.network_public_key)?;
        if &claimed_network != network_key {
            return Err(SignatureError::UntrustedNetworkKey);
        }
        self.verify_signature(network_key)?;
        if now_ms < self.not_before_ms {
            return Err(SignatureError::NotYetValid {
                not_before_ms: self.not_before_ms,
                now_ms,
            });
        }
        if now_ms > self.not_after_ms {
            return Err(SignatureError::CertificateExpired {
                not_after_ms: self.not_after_ms,
                now_ms,
            });
        }
        Ok(PublicKey::try_decode_protobuf(&self.oracle_public_key)?)
    }
}

impl pb::ResultBroadcast {
    /// Checks a broadcast received from `publisher`: its certificate must come
    /// from `network_key` and name `publisher`, and `publisher` must have signed it.
    pub fn verify_from(
        &self,
        publisher: &PeerId,
        network_key: &PublicKey,
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        let cert = self
            .certificate
            .as_ref()
            .ok_or(SignatureError::MissingCertificate)?;
        let oracle = cert.verify(network_key, now_ms)?;
        let certified = oracle.to_peer_id();
        if &certified != publisher {
            return Err(SignatureError::WrongPublisher {
                publisher: Box::new(*publisher),
                certified: Box::new(certified),
            });
        }
        self.verify_signature(&oracle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContentId;

    fn result(tokens: &[u32]) -> pb::WorkResult {
        pb::WorkResult {
            work_cid: ContentId::digest(b"work").to_bytes(),
            result_cid: ContentId::of_tokens(tokens).to_bytes(),
            token_ids: tokens.to_vec(),
            session_id: 7,
            round: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_result_verifies_and_any_change_breaks_it() {
        let scout = Keypair::generate_ed25519();
        let mut r = result(&[1, 2, 3]);
        r.sign(&scout).unwrap();
        assert_eq!(r.proof.len(), SIGNATURE_LEN);
        r.verify_signature(&scout.public()).unwrap();

        let mut tampered = r.clone();
        tampered.token_ids[0] = 9;
        assert!(matches!(
            tampered.verify_signature(&scout.public()),
            Err(SignatureError::BadSignature)
        ));
        let other = Keypair::generate_ed25519();
        assert!(r.verify_signature(&other.public()).is_err());
    }

    #[test]
    fn a_signature_for_one_message_type_is_not_valid_for_another() {
        // Empty messages of both types have the same (empty) protobuf encoding,
        // so only the signing domain tells them apart.
        assert_eq!(
            pb::WorkResult::default().encode_to_vec(),
            pb::OracleCertificate::default().encode_to_vec()
        );
        let key = Keypair::generate_ed25519();
        let mut r = pb::WorkResult::default();
        r.sign(&key).unwrap();
        r.verify_signature(&key.public()).unwrap();
        let cert = pb::OracleCertificate {
            signature: r.proof.clone(),
            ..Default::default()
        };
        assert!(cert.verify_signature(&key.public()).is_err());
    }

    #[test]
    fn the_signed_bytes_are_domain_zero_and_the_unsigned_encoding() {
        let mut r = result(&[1, 2]);
        let unsigned = r.encode_to_vec();
        r.sign(&Keypair::generate_ed25519()).unwrap();
        let mut expected = b"shard/1/work-result\0".to_vec();
        expected.extend(&unsigned);
        assert_eq!(r.signing_bytes(), expected);
        let cert = pb::OracleCertificate::default();
        assert_eq!(cert.signing_bytes(), b"shard/1/oracle-certificate\0");
        let broadcast = pb::ResultBroadcast::default();
        assert_eq!(broadcast.signing_bytes(), b"shard/1/result-broadcast\0");
    }

    #[test]
    fn certificates_check_issuer_and_window() {
        let network = Keypair::generate_ed25519();
        let oracle = Keypair::generate_ed25519();
        let cert = pb::OracleCertificate::issue(&network, &oracle.public(), 1_000, 2_000).unwrap();
        assert_eq!(
            cert.verify(&network.public(), 1_500).unwrap(),
            oracle.public()
        );
        assert!(matches!(
            cert.verify(&network.public(), 999),
            Err(SignatureError::NotYetValid { .. })
        ));
        assert!(matches!(
            cert.verify(&network.public(), 2_001),
            Err(SignatureError::CertificateExpired { .. })
        ));
        let rogue = Keypair::generate_ed25519();
        assert!(matches!(
            cert.verify(&rogue.public(), 1_500),
            Err(SignatureError::UntrustedNetworkKey)
        ));
        // A self-made certificate that claims the real network key fails the signature.
        let mut forged = pb::OracleCertificate::issue(&rogue, &oracle.public(), 0, 9_999).unwrap();
        forged.network_public_key = network.public().encode_protobuf();
        assert!(matches!(
            forged.verify(&network.public(), 1_500),
            Err(SignatureError::BadSignature)
        ));
    }

    #[test]
    fn broadcasts_are_accepted_only_from_the_certified_oracle() {
        let network = Keypair::generate_ed25519();
        let oracle = Keypair::generate_ed25519();
        let cert = pb::OracleCertificate::issue(&network, &oracle.public(), 0, 10_000).unwrap();
        let mut b = pb::ResultBroadcast {
            work_cid: ContentId::digest(b"work").to_bytes(),
            result: Some(result(&[5])),
            certificate: Some(cert),
            issued_at_ms: 5,
            ttl: 60,
            ..Default::default()
        };
        b.sign(&oracle).unwrap();
        let oracle_id = oracle.public().to_peer_id();
        b.verify_from(&oracle_id, &network.public(), 100).unwrap();

        let impostor = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            b.verify_from(&impostor, &network.public(), 100),
            Err(SignatureError::WrongPublisher { .. })
        ));
        let mut unsigned_by_oracle = b.clone();
        unsigned_by_oracle
            .sign(&Keypair::generate_ed25519())
            .unwrap();
        assert!(matches!(
            unsigned_by_oracle.verify_from(&oracle_id, &network.public(), 100),
            Err(SignatureError::BadSignature)
        ));
        b.certificate = None;
        assert!(matches!(
            b.verify_from(&oracle_id, &network.public(), 100),
            Err(SignatureError::MissingCertificate)
        ));
    }
}
