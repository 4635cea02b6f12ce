//! The signed envelope and its canonical byte encoding (see `docs/records.md`).
//!
//! ```text
//! body     = "FABREC01" kind:u8 name:str16 generation:u64 issued_at:i64 expires_at:i64
//!            scope_count:u16 (tag:u8 value:str16)* payload_len:u32 payload
//! envelope = "FABENV01" body_len:u32 body sig_count:u8 (public_key:[32] signature:[64])*
//! str16    = len:u16 utf8-bytes
//! ```
//! All integers are big-endian. `payload` is the canonical JSON of the spec.
//! Signatures are ed25519 over the whole body; the digest of a record is
//! SHA-256 of its body.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::canonical::{to_canonical_json, CanonicalError};
use crate::kinds::{Kind, Spec};
use crate::scope::{Scope, ScopeTerm};

/// Opens every record body: format magic and version 1.
pub const BODY_MAGIC: &[u8; 8] = b"FABREC01";
/// Opens every envelope: format magic and version 1.
pub const ENVELOPE_MAGIC: &[u8; 8] = b"FABENV01";
/// Largest envelope a node will parse; bigger input is malformed by definition.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// Longest record name in bytes (an object's `metadata.name`); also bounds scope values.
pub const MAX_NAME_BYTES: usize = 253;
/// Most scope terms one record may carry.
pub const MAX_SCOPE_TERMS: usize = 64;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 16;

/// Why bytes are not a well-formed envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Input longer than [`MAX_ENVELOPE_BYTES`]; holds its length.
    #[error("envelope is {0} bytes, more than the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Wrong magic in the named part: not a Fabric v1 record.
    #[error("bad magic in {0}: not a Fabric v1 record")]
    BadMagic(&'static str),
    /// Input ends inside the named field.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Bytes left over (count) after the named part.
    #[error("{0} trailing bytes after {1}")]
    Trailing(usize, &'static str),
    /// A kind code no [`Kind`] has.
    #[error("unknown kind code {0}")]
    UnknownKind(u8),
    /// The named string field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The named field breaks a rule (length, count, order, canonical form); with the detail.
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
}

/// The signed content of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Kind of the object the record carries.
    pub kind: Kind,
    /// The object's `metadata.name`; with `kind`, the record's key.
    pub name: String,
    /// Monotonic per (kind, name): a newer version of the record carries a higher one.
    pub generation: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; the record is dead at and after this instant.
    pub expires_at: i64,
    /// Part of the fleet the record is for; every signer's grant must cover it.
    pub scope: Scope,
    /// Canonical JSON of the spec.
    pub payload: Vec<u8>,
}

/// Why a record cannot be built from a spec.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The spec does not serialise to JSON.
    #[error("spec does not serialise: {0}")]
    Serialise(#[from] serde_json::Error),
    /// The spec's JSON has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The name is empty or longer than [`MAX_NAME_BYTES`].
    #[error("name {0:?} is empty or longer than {MAX_NAME_BYTES} bytes")]
    Name(String),
    /// `expires_at` is not after `issued_at`.
    #[error("expires_at {expires_at} is not after issued_at {issued_at}")]
    Lifetime {
        /// Requested issue time (Unix seconds).
        issued_at: i64,
        /// Requested expiry (Unix seconds).
        expires_at: i64,
    },
    /// More than [`MAX_SCOPE_TERMS`] terms, or a term value over [`MAX_NAME_BYTES`]; holds the term count.
    #[error("scope has {0} terms or a value longer than {MAX_NAME_BYTES} bytes")]
    Scope(usize),
}

impl Record {
    /// Builds a record whose payload is the canonical form of `spec`.
    pub fn new(
        spec: &Spec,
        name: &str,
        generation: u64,
        issued_at: i64,
        expires_at: i64,
        scope: Scope,
    ) -> Result<Record, RecordError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(RecordError::Name(name.to_owned()));
        }
        if scope.terms().len() > MAX_SCOPE_TERMS
            || scope
                .terms()
                .iter()
                .any(|t| t.value().len() > MAX_NAME_BYTES)
        {
            return Err(RecordError::Scope(scope.terms().len()));
        }
        if expires_at <= issued_at {
            return Err(RecordError::Lifetime {
                issued_at,
                expires_at,
            });
        }
        Ok(Record {
            kind: spec.kind(),
            name: name.to_owned(),
            generation,
            issued_at,
            expires_at,
            scope,
            payload: to_canonical_json(&spec.to_json()?)?,
        })
    }

    /// The canonical body bytes: what is signed and hashed.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.name.len() + self.payload.len());
        out.extend_from_slice(BODY_MAGIC);
        out.push(self.kind.code());
        put_str16(&mut out, &self.name);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        let terms = self.scope.terms();
        out.extend_from_slice(&(terms.len() as u16).to_be_bytes());
        for t in terms {
            out.push(t.tag());
            put_str16(&mut out, t.value());
        }
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses body bytes strictly: limits, sorted scope terms, no trailing bytes.
    pub fn decode_body(bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take(8, "body magic")? != BODY_MAGIC {
            return Err(DecodeError::BadMagic("body"));
        }
        let code = r.u8("kind")?;
        let kind = Kind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
        let name = r.str16("name")?;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(DecodeError::Invalid(
                "name",
                format!("{name:?} has bad length"),
            ));
        }
        let generation = r.u64("generation")?;
        let issued_at = r.u64("issued_at")? as i64;
        let expires_at = r.u64("expires_at")? as i64;
        let count = r.u16("scope count")? as usize;
        if count == 0 || count > MAX_SCOPE_TERMS {
            return Err(DecodeError::Invalid("scope", format!("{count} terms")));
        }
        let mut terms = Vec::with_capacity(count);
        for _ in 0..count {
            let tag = r.u8("scope tag")?;
            let value = r.str16("scope value")?;
            let term = ScopeTerm::from_tag(tag, value)
                .ok_or_else(|| DecodeError::Invalid("scope", format!("tag {tag}")))?;
            terms.push(term);
        }
        // Canonical means strictly increasing: one byte string per scope set.
        if terms.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DecodeError::Invalid(
                "scope",
                "terms not strictly sorted".into(),
            ));
        }
        let scope = Scope::new(terms).ok_or(DecodeError::Invalid("scope", "empty".into()))?;
        let len = r.u32("payload length")? as usize;
        let payload = r.take(len, "payload")?.to_vec();
        r.finish("body")?;
        Ok(Record {
            kind,
            name,
            generation,
            issued_at,
            expires_at,
            scope,
            payload,
        })
    }

    /// Strictly parses the payload as this record's kind and checks it is in
    /// canonical form, so two different byte strings never mean the same record.
    pub fn spec(&self) -> Result<Spec, DecodeError> {
        let value: serde_json::Value = serde_json::from_slice(&self.payload)
            .map_err(|e| DecodeError::Invalid("payload", e.to_string()))?;
        let spec = Spec::from_json(self.kind, value)
            .map_err(|e| DecodeError::Invalid("payload", e.to_string()))?;
        let again = spec
            .to_json()
            .map_err(|e| DecodeError::Invalid("payload", e.to_string()))
            .and_then(|v| {
                to_canonical_json(&v).map_err(|e| DecodeError::Invalid("payload", e.to_string()))
            })?;
        if again != self.payload {
            return Err(DecodeError::Invalid(
                "payload",
                "not in canonical form".into(),
            ));
        }
        Ok(spec)
    }
}

/// One signature: who signed (their public key) and the signature bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The signer's ed25519 public key.
    pub public_key: [u8; 32],
    /// The ed25519 signature over the envelope's body.
    pub signature: [u8; 64],
}

/// A record with its signatures; `body` is kept byte-for-byte so relays never re-encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The encoded record body, exactly the bytes that were signed.
    pub body: Vec<u8>,
    /// The record decoded from `body`.
    pub record: Record,
    /// Signatures over `body`, in envelope order.
    pub signatures: Vec<SignatureEntry>,
}

impl Envelope {
    /// Signs `record` with every key in `keys` (at most [`MAX_SIGNATURES`] are
    /// used: an envelope carries no more).
    pub fn sign(record: Record, keys: &[&SigningKey]) -> Envelope {
        let body = record.encode_body();
        let signatures = keys
            .iter()
            .take(MAX_SIGNATURES)
            .map(|k| SignatureEntry {
                public_key: k.verifying_key().to_bytes(),
                signature: k.sign(&body).to_bytes(),
            })
            .collect();
        Envelope {
            body,
            record,
            signatures,
        }
    }

    /// Adds one more signature (for threshold signing by several holders);
    /// ignored once the envelope carries [`MAX_SIGNATURES`].
    pub fn add_signature(&mut self, key: &SigningKey) {
        if self.signatures.len() >= MAX_SIGNATURES {
            return;
        }
        self.signatures.push(SignatureEntry {
            public_key: key.verifying_key().to_bytes(),
            signature: key.sign(&self.body).to_bytes(),
        });
    }

    /// The record digest: SHA-256 of the body.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }

    /// The envelope's wire bytes (see the module docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.body.len() + 96 * self.signatures.len());
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.push(self.signatures.len() as u8);
        for s in &self.signatures {
            out.extend_from_slice(&s.public_key);
            out.extend_from_slice(&s.signature);
        }
        out
    }

    /// Parses envelope bytes. Checks structure only; signatures are the job of `accept`.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        if r.take(8, "envelope magic")? != ENVELOPE_MAGIC {
            return Err(DecodeError::BadMagic("envelope"));
        }
        let len = r.u32("body length")? as usize;
        let body = r.take(len, "body")?.to_vec();
        let count = r.u8("signature count")? as usize;
        if count == 0 || count > MAX_SIGNATURES {
            return Err(DecodeError::Invalid(
                "signatures",
                format!("{count} signatures, expected 1..={MAX_SIGNATURES}"),
            ));
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let mut public_key = [0u8; 32];
            public_key.copy_from_slice(r.take(32, "signer public key")?);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(r.take(64, "signature")?);
            signatures.push(SignatureEntry {
                public_key,
                signature,
            });
        }
        r.finish("envelope")?;
        let record = Record::decode_body(&body)?;
        Ok(Envelope {
            body,
            record,
            signatures,
        })
    }

    /// Public keys of the signers, as parsed verifying keys.
    pub fn verifying_keys(&self) -> Result<Vec<VerifyingKey>, DecodeError> {
        self.signatures
            .iter()
            .map(|s| {
                VerifyingKey::from_bytes(&s.public_key).map_err(|_| {
                    DecodeError::Invalid("signer public key", hex::encode(s.public_key))
                })
            })
            .collect()
    }
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Callers bound every string well below u16::MAX (names, scope values).
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(what))?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }

    fn str16(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::NotUtf8(what))
    }

    fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n, what)),
        }
    }
}
