//! Validated plans, shared by the runs of one workflow.
//!
//! Validating a plan is most of what starting a run costs the executor (callgrind: 24 % of all
//! instructions in the engine benchmark, mostly deserialising the document into the plan model),
//! and the runs of one workflow all carry the same document. So a validated plan is kept, keyed by
//! the document's content and the agent registry it was checked against, and a run whose document
//! is equal (compared in full on a hit, so a hash collision cannot swap plans) and whose registry
//! is the same snapshot reuses it. A registry refresh makes a new snapshot, so plans are validated
//! again against the new agents. Failed validations are not kept: a bad plan is rare and its
//! message must name the run's own document.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{AgentCatalog, InvalidPlan, Plan, validate};

/// Plans kept at most; when full, the cache starts over (workflows in use come back at once).
const CAPACITY: usize = 256;

struct Entry<R> {
    document: Arc<Value>,
    registry: Arc<R>,
    plan: Arc<Plan>,
}

/// The entries by fingerprint, and the fingerprint of each kept document by its address.
///
/// Why the addresses: the Kafka requests of one workflow share one document already (the ingress
/// decodes a plan text once, `wire::PlanTexts`), and hashing the whole document again for each run
/// cost 2 % of the engine benchmark's instructions. (A stored definition is loaded per run, so its
/// runs take the fingerprint path.)
/// An address is only trusted while its entry holds that very document (`Arc::ptr_eq`): a freed
/// document's address reused by another allocation misses and takes the fingerprint path.
struct Entries<R> {
    by_fingerprint: HashMap<u64, Entry<R>>,
    by_address: HashMap<usize, u64>,
}

impl<R> Default for Entries<R> {
    fn default() -> Self {
        Self { by_fingerprint: HashMap::new(), by_address: HashMap::new() }
    }
}

impl<R> Entries<R> {
    /// The plan kept for `document` itself (the same allocation) and `registry`.
    fn same_document(&self, document: &Arc<Value>, registry: &Arc<R>) -> Option<Arc<Plan>> {
        let key = self.by_address.get(&(Arc::as_ptr(document) as usize))?;
        let entry = self.by_fingerprint.get(key)?;
        (Arc::ptr_eq(&entry.document, document) && Arc::ptr_eq(&entry.registry, registry))
            .then(|| Arc::clone(&entry.plan))
    }
}

/// Validated plans by document and registry snapshot (`R` is the registry's type).
pub struct PlanCache<R> {
    entries: Mutex<Entries<R>>,
    /// Seeds the documents' fingerprints. Why foldhash and not the standard SipHash: every run
    /// fingerprints its whole document, which made SipHash 4.5 % of the engine benchmark's
    /// instructions; a collision costs only a miss (entries are compared in full), so the hash
    /// need not resist crafted input, and a per-process seed keeps crafted collisions from
    /// being repeatable anyway.
    hasher: foldhash::fast::RandomState,
}

impl<R> std::fmt::Debug for PlanCache<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanCache").finish_non_exhaustive()
    }
}

impl<R> Default for PlanCache<R> {
    fn default() -> Self {
        Self { entries: Mutex::default(), hasher: foldhash::fast::RandomState::default() }
    }
}

impl<R: AgentCatalog> PlanCache<R> {
    /// The plan of `document` as validated against `registry`: from the cache, or validated now.
    pub fn validate(&self, document: &Arc<Value>, registry: &Arc<R>) -> Result<Arc<Plan>, InvalidPlan> {
        if let Some(plan) = self.lock().same_document(document, registry) {
            return Ok(plan);
        }
        let key = fingerprint(document, self.hasher.build_hasher());
        {
            let mut entries = self.lock();
            if let Some(entry) = entries.by_fingerprint.get_mut(&key)
                && Arc::ptr_eq(&entry.registry, registry)
                && *entry.document == **document
            {
                // An equal document in another allocation (the ingress decoded the same text
                // again after its map started over): the entry takes it, so the runs that share
                // it are found by address from now on.
                let plan = Arc::clone(&entry.plan);
                let previous = std::mem::replace(&mut entry.document, Arc::clone(document));
                entries.by_address.remove(&(Arc::as_ptr(&previous) as usize));
                entries.by_address.insert(Arc::as_ptr(document) as usize, key);
                return Ok(plan);
            }
        }
        let plan = Arc::new(validate(document, registry.as_ref())?);
        let mut entries = self.lock();
        if entries.by_fingerprint.len() >= CAPACITY {
            entries.by_fingerprint.clear();
            entries.by_address.clear();
        }
        let entry = Entry { document: Arc::clone(document), registry: Arc::clone(registry), plan: Arc::clone(&plan) };
        if let Some(replaced) = entries.by_fingerprint.insert(key, entry) {
            entries.by_address.remove(&(Arc::as_ptr(&replaced.document) as usize));
        }
        entries.by_address.insert(Arc::as_ptr(document) as usize, key);
        Ok(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<R>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A hash of a JSON document's content (serde_json's `Value` has no `Hash`): equal documents,
/// as serde_json compares them, hash alike.
fn fingerprint(document: &Value, mut state: impl Hasher) -> u64 {
    fn feed(value: &Value, state: &mut impl Hasher) {
        match value {
            Value::Null => 0u8.hash(state),
            Value::Bool(b) => (1u8, b).hash(state),
            // serde_json's numbers are equal when they are the same kind and value: 1 is not 1.0.
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => (2u8, 0u8, u).hash(state),
                (None, Some(i), _) => (2u8, 1u8, i).hash(state),
                (None, None, f) => (2u8, 2u8, f.map(f64::to_bits)).hash(state),
            },
            Value::String(s) => (3u8, s).hash(state),
            Value::Array(items) => {
                (4u8, items.len()).hash(state);
                items.iter().for_each(|item| feed(item, state));
            }
            Value::Object(fields) => {
                (5u8, fields.len()).hash(state);
                for (key, item) in fields {
                    key.hash(state);
                    feed(item, state);
                }
            }
        }
    }
    feed(document, &mut state);
    state.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug)]
    struct Knows(&'static str);
    impl AgentCatalog for Knows {
        fn knows(&self, agent_name: &str) -> bool {
            agent_name == self.0
        }
    }

    fn document(agent: &str) -> Arc<Value> {
        Arc::new(json!({"name": "p", "start_step": "a", "steps": {"a": {"id": "a", "agent_name": agent}}}))
    }

    #[test]
    fn an_equal_document_against_the_same_registry_reuses_the_plan() {
        let cache = PlanCache::default();
        let registry = Arc::new(Knows("echo"));
        let first = cache.validate(&document("echo"), &registry).unwrap();
        // Another request's copy of the same plan: equal, not the same allocation.
        let again = cache.validate(&document("echo"), &registry).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }

    #[test]
    fn another_registry_or_document_is_validated_again() {
        let cache = PlanCache::default();
        let old = Arc::new(Knows("echo"));
        let first = cache.validate(&document("echo"), &old).unwrap();
        // The agents changed: the same document is checked against the new snapshot, and fails.
        let new = Arc::new(Knows("other"));
        let error = cache.validate(&document("echo"), &new).unwrap_err();
        assert!(error.to_string().contains("echo"), "{error}");
        let changed = cache.validate(&document("other"), &new).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
    }

    #[test]
    fn a_shared_document_is_found_by_address_only_with_its_own_registry() {
        let cache = PlanCache::default();
        let shared = document("echo");
        let echo = Arc::new(Knows("echo"));
        let first = cache.validate(&shared, &echo).unwrap();
        assert!(cache.lock().same_document(&shared, &echo).is_some());
        assert!(Arc::ptr_eq(&first, &cache.validate(&shared, &echo).unwrap()));
        // The same allocation against another registry snapshot is checked again, and fails.
        let other = Arc::new(Knows("other"));
        assert!(cache.lock().same_document(&shared, &other).is_none());
        assert!(cache.validate(&shared, &other).is_err());
        // An equal document elsewhere is a hit by content, not by address; the entry then keeps
        // that one, and finds it by address.
        let copy = document("echo");
        assert!(cache.lock().same_document(&copy, &echo).is_none());
        assert!(Arc::ptr_eq(&first, &cache.validate(&copy, &echo).unwrap()));
        assert!(cache.lock().same_document(&copy, &echo).is_some());
        assert!(cache.lock().same_document(&shared, &echo).is_none());
        assert!(Arc::ptr_eq(&first, &cache.validate(&shared, &echo).unwrap()));
    }

    #[test]
    fn fingerprints_tell_documents_apart() {
        let seed = foldhash::fast::RandomState::default();
        let fingerprint = |document: &Value| fingerprint(document, seed.build_hasher());
        assert_ne!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": "1"})));
        assert_ne!(fingerprint(&json!([1, [2]])), fingerprint(&json!([[1], 2])));
        assert_ne!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": 1.0})));
        assert_ne!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": 2})));
        assert_ne!(fingerprint(&json!({"a": -1})), fingerprint(&json!({"a": 1})));
        assert_eq!(fingerprint(&json!({"a": [1, -2, 0.5, null]})), fingerprint(&json!({"a": [1, -2, 0.5, null]})));
    }
}
