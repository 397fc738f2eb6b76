//! Changes to a plugin config made by tests: extra keys, masquerade.

use serde_json::{Value, json};

use crate::Node;

/// `conf` with every key of `extra` (an object) set on it.
pub fn with_keys(mut conf: Value, extra: Value) -> Value {
    let Value::Object(extra) = extra else {
        panic!("with_keys takes an object, got {extra}");
    };
    for (key, value) in extra {
        conf[key] = value;
    }
    conf
}

/// The node's default config with `ipMasq` on.
pub fn masquerade_conf(node: &Node) -> Value {
    with_keys(node.conf().build(), json!({ "ipMasq": true }))
}

/// `conf` with `ipMasq` on.
pub fn masquerading(conf: Value) -> Value {
    with_keys(conf, json!({ "ipMasq": true }))
}
