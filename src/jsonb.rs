//! A `jsonb` argument as PostgreSQL passes it. pgrx's `JsonB` would print it to text and
//! parse that into serde values on every call; `amba_track` only checks and stores it.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::prelude::*;

pub struct JsonbDatum(pub pg_sys::Datum);

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum))
    }
}

impl IntoDatum for JsonbDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for JsonbDatum {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(JsonbDatum, arg_only = "jsonb");

impl JsonbDatum {
    /// jsonb_typeof of the value: "object", "array", "number", ...
    pub fn kind(&self) -> String {
        unsafe { pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(self.0)]) }
            .expect("jsonb_typeof of a jsonb")
    }

    /// The size of its JSON text, as octet_length(properties::text).
    pub fn text_len(&self) -> usize {
        unsafe {
            let text =
                pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(self.0)])
                    .expect("jsonb_out of a jsonb");
            let len = text.to_bytes().len();
            pg_sys::pfree(text.as_ptr().cast_mut().cast());
            len
        }
    }
}

/// The largest JSON text amba parses from an argument (attributes, a condition): 128 KiB, a
/// guard against huge inputs only (a condition's own limit, 64 KiB of compact JSON, is
/// checked when it is compiled).
pub const MAX_PARSED_BYTES: usize = 128 * 1024;

impl JsonbDatum {
    /// The value parsed into serde's form (its JSON text, parsed): only where a rule needs
    /// to look inside, e.g. the attributes of a new user of a targeted experiment.
    /// INVALID_ARGUMENT naming `what` for what jsonb holds but serde cannot (a number beyond
    /// double precision such as 1e400, nesting deeper than 128) and for JSON text over
    /// [`MAX_PARSED_BYTES`].
    pub fn to_value(&self, what: &str) -> serde_json::Value {
        let parsed = unsafe {
            let text =
                pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(self.0)])
                    .expect("jsonb_out of a jsonb");
            let bytes = text.to_bytes();
            let parsed = if bytes.len() > MAX_PARSED_BYTES {
                Err(format!(
                    "{what} is {} bytes as JSON text; at most {MAX_PARSED_BYTES}",
                    bytes.len()
                ))
            } else {
                serde_json::from_slice(bytes).map_err(|e| {
                    format!("{what} cannot be read: {e} (numbers must fit in double precision, nesting at most 128 levels)")
                })
            };
            pg_sys::pfree(text.as_ptr().cast_mut().cast());
            parsed
        };
        parsed.unwrap_or_else(|detail| {
            crate::errors::raise_code(amba_core::ErrorCode::InvalidArgument, detail)
        })
    }
}
