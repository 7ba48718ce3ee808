//! Typed ids and the arenas they index, in the manner of `cranelift-entity`.
//!
//! An id is a `u32` newtype made by [`entity_id!`]; an arena ([`PrimaryMap`]) owns the entities
//! and can be indexed only by its own id type, so a `ValueId` can never index the node arena.
//! Analyses keep their facts in side tables ([`SecondaryMap`]) keyed by the same ids.

use std::fmt;
use std::marker::PhantomData;

/// A small typed index into a [`PrimaryMap`].
pub trait EntityId: Copy + Eq + Ord + std::hash::Hash + fmt::Debug + fmt::Display {
    fn new(index: usize) -> Self;
    fn index(self) -> usize;
}

/// Declares a `u32` id type printed as `{prefix}{index}` (for example `v3`, `n12`).
#[macro_export]
macro_rules! entity_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl $crate::entity::EntityId for $name {
            fn new(index: usize) -> Self {
                // An arena of four billion nodes is a broken invariant, not a user error.
                $name(u32::try_from(index).expect(concat!(stringify!($name), " overflow")))
            }
            fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl $name {
            /// Parses the printed form (`v3`), as written by `Display`.
            pub fn parse(text: &str) -> Option<Self> {
                let digits = text.strip_prefix($prefix)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse::<u32>().ok().map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad` so that width and alignment flags work: `{:<6}`.
                f.pad(&format!(concat!($prefix, "{}"), self.0))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(self, f)
            }
        }

        /// Serialised as printed (`"v3"`), so files read like the text form.
        impl $crate::entity::serde::Serialize for $name {
            fn serialize<S: $crate::entity::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> $crate::entity::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::entity::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as $crate::entity::serde::Deserialize>::deserialize(d)?;
                $name::parse(&text).ok_or_else(|| {
                    <D::Error as $crate::entity::serde::de::Error>::custom(format!(
                        concat!("`{}` is not a ", stringify!($name), " (`", $prefix, "` and a number)"),
                        text
                    ))
                })
            }
        }
    };
}

/// For [`entity_id!`]'s serde impls in other crates.
#[doc(hidden)]
pub use serde;

/// The arena that owns entities of type `V`, indexed only by `K`.
#[derive(Clone, PartialEq)]
pub struct PrimaryMap<K: EntityId, V> {
    elems: Vec<V>,
    _key: PhantomData<K>,
}

impl<K: EntityId, V> PrimaryMap<K, V> {
    pub fn new() -> Self {
        PrimaryMap { elems: Vec::new(), _key: PhantomData }
    }

    /// Adds an entity and returns its new id.
    pub fn push(&mut self, v: V) -> K {
        let k = K::new(self.elems.len());
        self.elems.push(v);
        k
    }

    /// The id the next `push` will return.
    pub fn next_key(&self) -> K {
        K::new(self.elems.len())
    }

    pub fn get(&self, k: K) -> Option<&V> {
        self.elems.get(k.index())
    }

    pub fn get_mut(&mut self, k: K) -> Option<&mut V> {
        self.elems.get_mut(k.index())
    }

    pub fn is_valid(&self, k: K) -> bool {
        k.index() < self.elems.len()
    }

    pub fn len(&self) -> usize {
        self.elems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elems.is_empty()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = K> + ExactSizeIterator + '_ {
        (0..self.elems.len()).map(K::new)
    }

    pub fn values(&self) -> std::slice::Iter<'_, V> {
        self.elems.iter()
    }

    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, V> {
        self.elems.iter_mut()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (K, &V)> + ExactSizeIterator + '_ {
        self.elems.iter().enumerate().map(|(i, v)| (K::new(i), v))
    }
}

/// A list, entity `i` at position `i`.
impl<K: EntityId, V: serde::Serialize> serde::Serialize for PrimaryMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.elems.serialize(s)
    }
}

impl<'de, K: EntityId, V: serde::Deserialize<'de>> serde::Deserialize<'de> for PrimaryMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PrimaryMap { elems: Vec::deserialize(d)?, _key: PhantomData })
    }
}

impl<K: EntityId, V> FromIterator<V> for PrimaryMap<K, V> {
    fn from_iter<I: IntoIterator<Item = V>>(iter: I) -> Self {
        PrimaryMap { elems: iter.into_iter().collect(), _key: PhantomData }
    }
}

impl<K: EntityId, V> Default for PrimaryMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: EntityId, V: fmt::Debug> fmt::Debug for PrimaryMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: EntityId, V> std::ops::Index<K> for PrimaryMap<K, V> {
    type Output = V;
    fn index(&self, k: K) -> &V {
        &self.elems[k.index()]
    }
}

impl<K: EntityId, V> std::ops::IndexMut<K> for PrimaryMap<K, V> {
    fn index_mut(&mut self, k: K) -> &mut V {
        &mut self.elems[k.index()]
    }
}

/// A side table mapping ids of one arena to facts about them; unset entries read as the default.
#[derive(Clone, Debug)]
pub struct SecondaryMap<K: EntityId, V: Clone> {
    elems: Vec<V>,
    default: V,
    _key: PhantomData<K>,
}

impl<K: EntityId, V: Clone> SecondaryMap<K, V> {
    pub fn with_default(default: V) -> Self {
        SecondaryMap { elems: Vec::new(), default, _key: PhantomData }
    }
}

impl<K: EntityId, V: Clone + Default> SecondaryMap<K, V> {
    pub fn new() -> Self {
        Self::with_default(V::default())
    }
}

impl<K: EntityId, V: Clone + Default> Default for SecondaryMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: EntityId, V: Clone> std::ops::Index<K> for SecondaryMap<K, V> {
    type Output = V;
    fn index(&self, k: K) -> &V {
        self.elems.get(k.index()).unwrap_or(&self.default)
    }
}

impl<K: EntityId, V: Clone> std::ops::IndexMut<K> for SecondaryMap<K, V> {
    fn index_mut(&mut self, k: K) -> &mut V {
        if k.index() >= self.elems.len() {
            self.elems.resize(k.index() + 1, self.default.clone());
        }
        &mut self.elems[k.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    entity_id!(TestId, "t");

    #[test]
    fn ids_print_and_parse_with_their_prefix() {
        let mut arena: PrimaryMap<TestId, &str> = PrimaryMap::new();
        let a = arena.push("a");
        let b = arena.push("b");
        assert_eq!(b.to_string(), "t1");
        assert_eq!(TestId::parse("t1"), Some(b));
        assert_eq!(TestId::parse("t"), None);
        assert_eq!(TestId::parse("x1"), None);
        assert_eq!(TestId::parse("t-1"), None);
        assert_eq!(TestId::parse("t99999999999"), None);
        assert_eq!(arena[a], "a");
        assert!(!arena.is_valid(TestId::new(2)));
    }

    #[test]
    fn ids_and_arenas_serialise_as_printed() {
        let mut arena: PrimaryMap<TestId, TestId> = PrimaryMap::new();
        let a = arena.push(TestId::new(5));
        let json = serde_json::to_string(&(a, &arena)).unwrap();
        assert_eq!(json, r#"["t0",["t5"]]"#);
        let (back, table): (TestId, PrimaryMap<TestId, TestId>) = serde_json::from_str(&json).unwrap();
        assert_eq!((back, table[back]), (a, TestId::new(5)));
        let e = serde_json::from_str::<TestId>("\"x5\"").unwrap_err().to_string();
        assert!(e.contains("`x5` is not a TestId (`t` and a number)"), "{e}");
    }

    #[test]
    fn secondary_map_reads_default_past_its_end() {
        let mut side: SecondaryMap<TestId, u32> = SecondaryMap::new();
        side[TestId::new(3)] = 7;
        assert_eq!(side[TestId::new(3)], 7);
        assert_eq!(side[TestId::new(1)], 0);
        assert_eq!(side[TestId::new(100)], 0);
    }
}
