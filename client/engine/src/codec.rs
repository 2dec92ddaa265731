//! How a device's saved state is encoded: postcard behind one tag byte, for the engine's state and
//! for each MLS value alike.
//!
//! Postcard's decoder is small for each type it reads, where JSON and CBOR decoders for the many
//! types a device keeps made up a third of the browser's engine. Earlier versions saved the
//! engine's state in CBOR and MLS values in JSON; neither starts with the tag byte. Native devices
//! still read them (and save postcard from then on); the browser's engine carries neither decoder
//! and reports such state as [`CodecError::Earlier`].

use serde::{Serialize, de::DeserializeOwned};

/// The first byte of everything this version saves. No JSON text and no CBOR map or array starts
/// with it.
const POSTCARD: u8 = 0;

/// Saved state that could not be encoded or read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A value could not be encoded.
    #[error("a value could not be encoded: {0}")]
    Encode(String),
    /// Saved bytes are not the value they should hold.
    #[error("saved state is unreadable: {0}")]
    Decode(String),
    /// State saved by an earlier version, in a format this build does not read.
    #[error(
        "this device was saved by an earlier version of Tessera, in a format the browser's engine \
         no longer reads"
    )]
    Earlier,
}

/// How an earlier version encoded what is now postcard.
#[derive(Debug, Clone, Copy)]
pub enum Earlier {
    /// MLS values.
    Json,
    /// The engine's state.
    Cbor,
}

/// `value` as this version saves it.
///
/// # Errors
/// When `value` does not encode (a map with non-string keys never does here).
pub fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(value, vec![POSTCARD]).map_err(|e| CodecError::Encode(e.to_string()))
}

/// The value saved as `bytes`, by this version or (natively) as `earlier` encoded it.
///
/// # Errors
/// When `bytes` are not a `V`, or were saved in an earlier format this build does not read.
pub fn decode<V: DeserializeOwned>(bytes: &[u8], earlier: Earlier) -> Result<V, CodecError> {
    match bytes.split_first() {
        Some((&POSTCARD, body)) => match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok(_) => Err(CodecError::Decode("bytes left over".into())),
            Err(e) => Err(CodecError::Decode(e.to_string())),
        },
        _ => decode_earlier(bytes, earlier),
    }
}

/// `value` and `tail` as this version saves them, one after the other: a record whose later part
/// earlier versions did not write.
///
/// # Errors
/// When either does not encode.
pub fn encode_with_tail<V: Serialize, T: Serialize>(
    value: &V,
    tail: &T,
) -> Result<Vec<u8>, CodecError> {
    let head = encode(value)?;
    postcard::to_extend(tail, head).map_err(|e| CodecError::Encode(e.to_string()))
}

/// The value and tail of [`encode_with_tail`]; the tail's default for a record without one (saved
/// by an earlier version, in any format [`decode`] reads).
///
/// # Errors
/// As [`decode`].
pub fn decode_with_tail<V: DeserializeOwned, T: DeserializeOwned + Default>(
    bytes: &[u8],
    earlier: Earlier,
) -> Result<(V, T), CodecError> {
    decode_with_tails::<V, T, ()>(bytes, earlier).map(|(value, tail, ())| (value, tail))
}

/// The value and two tails written one after the other (`encode_with_tail(&value, &(t, u))`);
/// each tail's default where the record ends before it (saved by an earlier version).
///
/// # Errors
/// As [`decode`].
pub fn decode_with_tails<V, T, U>(bytes: &[u8], earlier: Earlier) -> Result<(V, T, U), CodecError>
where
    V: DeserializeOwned,
    T: DeserializeOwned + Default,
    U: DeserializeOwned + Default,
{
    decode_with_four_tails::<V, T, U, (), ()>(bytes, earlier).map(|(v, t, u, (), ())| (v, t, u))
}

/// The value and four tails written one after the other (`encode_with_tail(&value, &(t, u, w,
/// x))`); each tail's default where the record ends before it (saved by an earlier version).
///
/// # Errors
/// As [`decode`].
pub fn decode_with_four_tails<V, T, U, W, X>(
    bytes: &[u8],
    earlier: Earlier,
) -> Result<(V, T, U, W, X), CodecError>
where
    V: DeserializeOwned,
    T: DeserializeOwned + Default,
    U: DeserializeOwned + Default,
    W: DeserializeOwned + Default,
    X: DeserializeOwned + Default,
{
    fn take<Y: DeserializeOwned + Default>(rest: &[u8]) -> Result<(Y, &[u8]), CodecError> {
        if rest.is_empty() {
            return Ok((Y::default(), rest));
        }
        postcard::take_from_bytes(rest).map_err(|e| CodecError::Decode(e.to_string()))
    }
    let Some((&POSTCARD, body)) = bytes.split_first() else {
        return decode_earlier(bytes, earlier)
            .map(|v| (v, T::default(), U::default(), W::default(), X::default()));
    };
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Decode(e.to_string()))?;
    let (tail, rest) = take(rest)?;
    let (second, rest) = take(rest)?;
    let (third, rest) = take(rest)?;
    let (fourth, rest) = take(rest)?;
    if !rest.is_empty() {
        return Err(CodecError::Decode("bytes left over".into()));
    }
    Ok((value, tail, second, third, fourth))
}

#[cfg(not(target_arch = "wasm32"))]
fn decode_earlier<V: DeserializeOwned>(bytes: &[u8], earlier: Earlier) -> Result<V, CodecError> {
    let decoded = match earlier {
        Earlier::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Earlier::Cbor => ciborium::from_reader(bytes).map_err(|e| e.to_string()),
    };
    decoded.map_err(CodecError::Decode)
}

#[cfg(target_arch = "wasm32")]
fn decode_earlier<V>(_bytes: &[u8], _earlier: Earlier) -> Result<V, CodecError> {
    Err(CodecError::Earlier)
}

/// `value` as an earlier version encoded it, where this build reads that format.
#[cfg(not(target_arch = "wasm32"))]
#[must_use]
pub fn earlier_encoding<V: Serialize + ?Sized>(value: &V, earlier: Earlier) -> Option<Vec<u8>> {
    match earlier {
        Earlier::Json => serde_json::to_vec(value).ok(),
        Earlier::Cbor => {
            let mut out = Vec::new();
            ciborium::into_writer(value, &mut out).ok().map(|()| out)
        }
    }
}

/// `value` as an earlier version encoded it, where this build reads that format.
#[cfg(target_arch = "wasm32")]
#[must_use]
pub fn earlier_encoding<V: Serialize + ?Sized>(_value: &V, _earlier: Earlier) -> Option<Vec<u8>> {
    None
}

/// A JSON value read from text or bytes. Every JSON the engine and the page read goes through
/// here: serde_json's text and byte readers are two copies of its parser in the browser's engine.
///
/// # Errors
/// When `json` is not a `V`.
pub fn from_json<V: DeserializeOwned>(json: impl AsRef<[u8]>) -> serde_json::Result<V> {
    serde_json::from_slice(json.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        id: u64,
        name: Option<String>,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        map: BTreeMap<u32, Vec<u8>>,
    }

    fn sample() -> Sample {
        Sample {
            id: 300,
            name: Some("a".into()),
            bytes: vec![7; 40],
            map: [(1, vec![1, 2])].into(),
        }
    }

    #[test]
    fn a_record_reads_with_its_tail_and_an_earlier_one_without() {
        let value = sample();
        let tail = vec![7u8, 8];
        let both = encode_with_tail(&value, &tail).expect("encodes");
        let (back, back_tail): (Sample, Vec<u8>) =
            decode_with_tail(&both, Earlier::Json).expect("decodes");
        assert_eq!((back, back_tail), (sample(), tail));
        let (back, no_tail): (Sample, Vec<u8>) =
            decode_with_tail(&encode(&value).expect("encodes"), Earlier::Json).expect("decodes");
        assert_eq!((back, no_tail), (value, Vec::new()));
        let mut longer = both.clone();
        longer.push(0);
        assert!(decode_with_tail::<Sample, Vec<u8>>(&longer, Earlier::Json).is_err());
        // A second tail after the first, and its default for a record that ends before it.
        let (tail, second) = (vec![7u8, 8], vec![9u8]);
        let three = encode_with_tail(&sample(), &(&tail, &second)).expect("encodes");
        let (_, t, u): (Sample, Vec<u8>, Vec<u8>) =
            decode_with_tails(&three, Earlier::Json).expect("decodes");
        assert_eq!((t, u), (tail.clone(), second));
        let (_, t, u): (Sample, Vec<u8>, Vec<u8>) =
            decode_with_tails(&both, Earlier::Json).expect("decodes");
        assert_eq!((t, u), (tail, Vec::new()));
    }

    #[test]
    fn values_round_trip_behind_the_tag() {
        let bytes = encode(&sample()).expect("encodes");
        assert_eq!(bytes[0], POSTCARD);
        let back: Sample = decode(&bytes, Earlier::Json).expect("decodes");
        assert_eq!(back, sample());
    }

    #[test]
    fn earlier_formats_read_natively() {
        for earlier in [Earlier::Json, Earlier::Cbor] {
            let bytes = earlier_encoding(&sample(), earlier).expect("encodes");
            assert_ne!(bytes[0], POSTCARD, "{earlier:?} never starts with the tag");
            let back: Sample = decode(&bytes, earlier).expect("reads");
            assert_eq!(back, sample());
        }
    }

    #[test]
    fn damaged_values_are_refused_not_misread() {
        let bytes = encode(&sample()).expect("encodes");
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            decode::<Sample>(cut, Earlier::Cbor),
            Err(CodecError::Decode(_))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Sample>(&longer, Earlier::Cbor),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode::<Sample>(&[], Earlier::Json),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode::<Sample>(b"not json", Earlier::Json),
            Err(CodecError::Decode(_))
        ));
    }
}
