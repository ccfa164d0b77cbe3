//! A request enum's variant as a method's arguments, both ways, with serde.
//!
//! A generated `<Trait>Request` derives `Serialize` and `Deserialize` as a
//! plain (externally tagged) enum whose variants are named after the methods
//! and whose fields are the arguments. On the wire, though, the method name
//! and the arguments travel apart (oslo's `method` and `args`). The two
//! adapters here bridge that without an intermediate struct per method:
//!
//! - [`ArgsOf`] serializes a request as its variant's fields only (a struct,
//!   so a map of parameter name to value, exactly what a hand-written
//!   arguments struct would produce);
//! - [`decode`] deserializes a request from a method name and the arguments
//!   map, presenting them to the derived `Deserialize` as the enum's variant
//!   and its content.

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize, SerializeStruct, Serializer};

use crate::wire::{Args, Codec};
use crate::Error;

/// Serializes a request enum as its variant's fields: the arguments map.
pub(crate) struct ArgsOf<'a, R>(pub(crate) &'a R);

impl<R: Serialize> Serialize for ArgsOf<'_, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(VariantFields(serializer))
    }
}

/// A serializer that accepts one enum variant and writes only its content.
struct VariantFields<S>(S);

const NOT_A_VARIANT: &str =
    "a warren request must be an enum whose variants hold the method's arguments";

macro_rules! refuse {
    ($($method:ident($($ty:ty),*);)*) => {
        $(fn $method(self $(, _: $ty)*) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom(NOT_A_VARIANT))
        })*
    };
}

impl<S: Serializer> Serializer for VariantFields<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = Impossible<S::Ok, S::Error>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = StructFields<S::SerializeStruct>;

    /// `Method { a, b }`: the arguments `{"a": .., "b": ..}`.
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0.serialize_struct(variant, len).map(StructFields)
    }

    /// `Method(args)`: `args` is the arguments.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(self.0)
    }

    /// `Method`: no arguments, an empty map.
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_struct(variant, 0)?.end()
    }

    refuse! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Err(ser::Error::custom(NOT_A_VARIANT))
    }
}

/// A struct variant's fields, written as a struct.
struct StructFields<S>(S);

impl<S: SerializeStruct> ser::SerializeStructVariant for StructFields<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        self.0.serialize_field(key, value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

/// Decodes the request enum variant named `method` from the arguments map,
/// with the same decoders as [`Codec::decode_value`].
pub(crate) fn decode<R: DeserializeOwned>(method: &str, args: &Args) -> Result<R, Error> {
    match args.codec() {
        Codec::MsgPack => {
            let mut fields = rmp_serde::Deserializer::from_read_ref(args.raw());
            R::deserialize(Variant {
                method,
                fields: &mut fields,
            })
            .map_err(|e| Error::decode(format!("invalid MessagePack value: {e}")).with_source(e))
        }
        Codec::OsloJson => {
            let mut fields = serde_json::Deserializer::from_slice(args.raw());
            R::deserialize(Variant {
                method,
                fields: &mut fields,
            })
            .and_then(|request| fields.end().map(|()| request))
            .map_err(|e| Error::decode(format!("invalid JSON value: {e}")).with_source(e))
        }
    }
}

/// A method name and its arguments, seen as one enum variant.
struct Variant<'m, D> {
    method: &'m str,
    fields: D,
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for Variant<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom(NOT_A_VARIANT))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de, D: de::Deserializer<'de>> de::EnumAccess<'de> for Variant<'_, D> {
    type Error = D::Error;
    type Variant = Self;

    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), D::Error> {
        let method: de::value::StrDeserializer<'_, D::Error> = self.method.into_deserializer();
        Ok((seed.deserialize(method)?, self))
    }
}

impl<'de, D: de::Deserializer<'de>> de::VariantAccess<'de> for Variant<'_, D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        de::Deserialize::deserialize(self.fields).map(|de::IgnoredAny| ())
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, D::Error> {
        seed.deserialize(self.fields)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.fields.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.fields.deserialize_struct("arguments", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{decode, ArgsOf};
    use crate::wire::{Args, Codec};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Req {
        #[serde(rename = "add")]
        Add { a: i64, b: Option<String> },
        #[serde(rename = "ping")]
        Ping {},
    }

    #[derive(Serialize)]
    struct AddArgs {
        a: i64,
        b: Option<String>,
    }

    #[test]
    fn a_variant_encodes_as_its_arguments_struct() {
        for codec in [Codec::MsgPack, Codec::OsloJson] {
            let request = Req::Add {
                a: 7,
                b: Some("x".into()),
            };
            let expected = AddArgs {
                a: 7,
                b: Some("x".into()),
            };
            assert_eq!(
                codec.encode_value(&ArgsOf(&request)).unwrap(),
                codec.encode_value(&expected).unwrap(),
                "{codec:?}"
            );
        }
        assert_eq!(
            Codec::OsloJson
                .encode_value(&ArgsOf(&Req::Ping {}))
                .unwrap(),
            b"{}"
        );
    }

    #[test]
    fn arguments_decode_into_the_variant_the_method_names() {
        for codec in [Codec::MsgPack, Codec::OsloJson] {
            let args = Args::encode(codec, &serde_json::json!({"a": 1, "extra": true})).unwrap();
            assert_eq!(
                decode::<Req>("add", &args).unwrap(),
                Req::Add { a: 1, b: None },
                "{codec:?}: unknown keys are ignored, a missing Option is None"
            );
            let empty = Args::encode(codec, &serde_json::json!({})).unwrap();
            assert_eq!(decode::<Req>("ping", &empty).unwrap(), Req::Ping {});
            let err = decode::<Req>("add", &empty).unwrap_err();
            assert!(err.is_decode() && err.to_string().contains("`a`"), "{err}");
            let err = decode::<Req>("nope", &args).unwrap_err();
            assert!(err.to_string().contains("nope"), "{err}");
            let wrong = Args::encode(codec, &serde_json::json!({"a": "one"})).unwrap();
            assert!(decode::<Req>("add", &wrong).unwrap_err().is_decode());
        }
    }
}
