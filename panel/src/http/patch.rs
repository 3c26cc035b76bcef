//! PATCH bodies need three states for a nullable field: absent (keep), `null` (clear) and a
//! value (set). `#[serde(default, deserialize_with = "nullable")]` on an
//! `Option<Option<T>>` gives exactly that.

use serde::{Deserialize, Deserializer};

pub fn nullable<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}
