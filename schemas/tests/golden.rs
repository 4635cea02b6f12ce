//! Golden test vector: exact bytes and signature for a fixed record and key, so
//! other implementations can check they encode and sign the same way.
//!
//! The key is derived at test time from a public string (no private key is
//! committed). Regenerate with `FABRIC_WRITE_VECTORS=1 cargo test -p fabric-schemas --test golden`
//! only when the format version changes.

use ed25519_dalek::SigningKey;
use fabric_schemas::kinds::{EndpointScopeSpec, EndpointSpec, FabricNodeSpec, NodeRole, Spec};
use fabric_schemas::{Envelope, Record, Scope, ScopeTerm};
use sha2::{Digest, Sha256};

const VECTOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/envelope-v1.json"
);
const SEED_TEXT: &str = "fabric golden vector key v1";

fn golden() -> (SigningKey, Envelope) {
    let seed: [u8; 32] = Sha256::digest(SEED_TEXT.as_bytes()).into();
    let key = SigningKey::from_bytes(&seed);
    let spec = Spec::FabricNode(FabricNodeSpec {
        area: "alpha".into(),
        site_id: "alpha-site-1".into(),
        locality_group: "alpha-lan-1".into(),
        nat_group: "alpha-nat-1".into(),
        node_id: Some(hex::encode(key.verifying_key().to_bytes())),
        roles: vec![NodeRole::ControlApi, NodeRole::Relay],
        endpoints: vec![EndpointSpec {
            address: "192.0.2.11:7100".into(),
            scope: EndpointScopeSpec::Public,
            locality_group: None,
            nat_group: None,
        }],
        critical: true,
        resilience_target: None,
    });
    let scope = Scope::new(vec![
        ScopeTerm::Area("alpha".into()),
        ScopeTerm::Node("alpha-1".into()),
    ])
    .expect("scope");
    let record =
        Record::new(&spec, "alpha-1", 3, 1_800_000_000, 1_800_086_400, scope).expect("record");
    let env = Envelope::sign(record, &[&key]);
    (key, env)
}

#[test]
fn golden_vector_matches_committed_bytes() {
    let (key, env) = golden();
    let doc = serde_json::json!({
        "description": "FabricNode alpha-1, generation 3, scope area:alpha,node:alpha-1, one signature",
        "signing_key_seed": format!("sha256({SEED_TEXT:?})"),
        "public_key": hex::encode(key.verifying_key().to_bytes()),
        "payload_json": String::from_utf8(env.record.payload.clone()).expect("utf8"),
        "body_hex": hex::encode(&env.body),
        "signature_hex": hex::encode(env.signatures[0].signature),
        "envelope_hex": hex::encode(env.encode()),
        "digest_sha256_hex": hex::encode(env.digest()),
    });
    let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
    if std::env::var_os("FABRIC_WRITE_VECTORS").is_some() {
        std::fs::write(VECTOR, &text).expect("write vector");
    }
    let committed = std::fs::read_to_string(VECTOR).expect("committed vector exists");
    assert_eq!(
        committed, text,
        "encoding or signing changed: this breaks compatibility"
    );
}

#[test]
fn golden_vector_decodes_and_verifies() {
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(VECTOR).expect("vector")).expect("json");
    let bytes = hex::decode(committed["envelope_hex"].as_str().expect("hex")).expect("hex");
    let env = Envelope::decode(&bytes).expect("decodes");
    assert_eq!(env.record.name, "alpha-1");
    assert_eq!(env.record.generation, 3);
    let key = ed25519_dalek::VerifyingKey::from_bytes(&env.signatures[0].public_key).expect("key");
    let sig = ed25519_dalek::Signature::from_bytes(&env.signatures[0].signature);
    key.verify_strict(&env.body, &sig)
        .expect("signature verifies");
}
