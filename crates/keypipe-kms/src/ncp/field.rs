//! The request fields items come from: their size limits, their names in
//! messages ([`Field`]: `plaintext`, `ciphertext[3]`), Base64 decoding into
//! zeroizing buffers, and mapping a one-or-array field item by item.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::NcpError;
use super::ciphertext;
use super::crypto::{NONCE_LEN, TAG_LEN};
use super::request;

/// Largest plaintext of one item, decoded (32 KiB).
pub(super) const MAX_PLAINTEXT: usize = 32 * 1024;
/// Largest `context`, decoded.
pub(super) const MAX_CONTEXT: usize = 50;
/// Largest `data` to sign or verify, decoded (8 KiB).
pub(super) const MAX_SIGN_DATA: usize = 8 * 1024;
/// Largest ciphertext payload, decoded (an AES item of [`MAX_PLAINTEXT`]).
pub(super) const MAX_CIPHERTEXT_PAYLOAD: usize = NONCE_LEN + MAX_PLAINTEXT + TAG_LEN;
/// Largest signature payload, decoded.
pub(super) const MAX_SIGNATURE_PAYLOAD: usize = 512;

/// The request field an item came from, for messages: `plaintext`,
/// `ciphertext[3]`.
#[derive(Clone, Copy)]
pub(super) struct Field {
    name: &'static str,
    index: Option<usize>,
}

impl Field {
    pub(super) fn new(name: &'static str) -> Self {
        Field { name, index: None }
    }

    pub(super) fn item(name: &'static str, many: bool, index: usize) -> Self {
        Field {
            name,
            index: many.then_some(index),
        }
    }

    pub(super) fn invalid(self, what: impl fmt::Display) -> NcpError {
        NcpError::InvalidRequest(format!("field `{self}`: {what}"))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// Decodes a Base64 field of at most `max` bytes into a zeroizing buffer.
pub(super) fn decode_b64(
    field: Field,
    text: &str,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, NcpError> {
    let too_large = || field.invalid(format_args!("larger than {max} bytes"));
    if text.len() > ciphertext::max_encoded_len(max) {
        return Err(too_large());
    }
    // Room for the decoder's estimate, so the buffer never reallocates.
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    STANDARD
        .decode_vec(text, &mut out)
        .map_err(|_| field.invalid("not valid Base64"))?;
    if out.len() > max {
        return Err(too_large());
    }
    Ok(out)
}

/// A result text whose length sizes the reply buffer.
pub(super) trait TextLen {
    fn text_len(&self) -> usize;
}

impl TextLen for String {
    fn text_len(&self) -> usize {
        self.len()
    }
}

impl TextLen for Zeroizing<String> {
    fn text_len(&self) -> usize {
        self.len()
    }
}

/// Applies `f` to every item of a one-or-array field `name`, in order,
/// keeping its shape; also the results' total length (plus JSON quoting).
pub(super) fn map_items<S, T: TextLen>(
    name: &'static str,
    items: &request::OneOrMany<S>,
    mut f: impl FnMut(Field, &S) -> Result<T, NcpError>,
) -> Result<(request::OneOrMany<T>, usize), NcpError> {
    let many = items.is_many();
    let slice = items.as_slice();
    let mut out = Vec::with_capacity(slice.len());
    let mut len = 0;
    for (i, item) in slice.iter().enumerate() {
        let result = f(Field::item(name, many, i), item)?;
        len += result.text_len() + 3;
        out.push(result);
    }
    Ok((items.reshape(out), len))
}

/// Base64 of a secret, in a zeroizing string.
pub(super) fn encode_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(ciphertext::max_encoded_len(
        bytes.len(),
    )));
    STANDARD.encode_string(bytes, &mut out);
    out
}
