//! Stable machine-readable codes: each an enum whose variants serialize as the snake_case names
//! clients act on, with a catch-all for a code this build does not know yet.

/// Defines a code enum: every variant with its wire name, plus `Unknown` for a name sent by a
/// newer peer. Serialized as that name; `as_str` gives it for logs and metrics.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$doc:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$doc])* $variant, )*
            /// A code this build does not know (sent by a newer server).
            Unknown,
        }

        impl $name {
            /// Every known code.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code as it travels.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown => "unknown",
                }
            }

            /// The code named `text` ([`Self::Unknown`] for a name this build does not know).
            #[must_use]
            pub fn parse(text: &str) -> $name {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|code| code.as_str() == text)
                    .unwrap_or($name::Unknown)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok($name::parse(&text))
            }
        }
    };
}

pub(crate) use codes;

#[cfg(test)]
mod tests {
    use crate::ErrorCode;
    use crate::signal::FrameErrorCode;

    #[test]
    fn codes_travel_as_their_names_and_unknown_names_are_read_as_unknown() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).expect("serializes");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&json).expect("reads"),
                *code
            );
        }
        for code in FrameErrorCode::ALL {
            let json = serde_json::to_string(code).expect("serializes");
            assert_eq!(
                serde_json::from_str::<FrameErrorCode>(&json).expect("reads"),
                *code
            );
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"invitation_unusable\"").expect("reads"),
            ErrorCode::InvitationUnusable
        );
        assert_eq!(
            serde_json::from_str::<FrameErrorCode>("\"a_code_from_the_future\"").expect("reads"),
            FrameErrorCode::Unknown
        );
        assert!(
            serde_json::from_str::<ErrorCode>("7").is_err(),
            "a code is a string"
        );
    }
}
