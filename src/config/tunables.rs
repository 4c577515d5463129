//! `tunables!`: declares a configuration section once. Each tunable is one
//! line: its TOML key, its type, and where it comes from: a field of the
//! lower crate's config type in some unit (whose `Default` is the default),
//! or `local(default)` for a tunable of the server's own.

use std::time::Duration;

/// Declares a section read from TOML (`#[serde(default,
/// deny_unknown_fields)]`, keys in the order written) and its `Default`.
/// With `=> Lower`, the defaults come from `Lower::default()` and `apply`
/// writes the section over a `Lower`. Sources of a field:
///
/// - `same(path)`: `lower.path`, the same type;
/// - `secs(path)`, `millis(path)`: a [`Duration`] as whole seconds or
///   milliseconds (`u64`);
/// - `utf8(path)`: bytes as a string;
/// - `local(expr)`: not in the lower type; its default is `expr`.
macro_rules! tunables {
    (
        $(#[$meta:meta])*
        pub struct $name:ident => $lower:ty {
            $( $(#[$fmeta:meta])* $field:ident: $ty:ty = $unit:ident($($arg:tt)*), )*
        }
    ) => {
        tunables!(@struct [$(#[$meta])*] $name $lower {
            $( [$(#[$fmeta])*] $field: $ty = $unit($($arg)*), )*
        });
        impl $name {
            /// Writes these settings over `lower` (the server's own
            /// tunables aside).
            pub fn apply(&self, lower: &mut $lower) {
                $( tunables!(@apply lower (self.$field) $unit($($arg)*)); )*
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident: $ty:ty = $unit:ident($($arg:tt)*), )*
        }
    ) => {
        tunables!(@struct [$(#[$meta])*] $name () {
            $( [$(#[$fmeta])*] $field: $ty = $unit($($arg)*), )*
        });
    };
    (@struct [$($meta:tt)*] $name:ident $lower:ty {
        $( [$($fmeta:tt)*] $field:ident: $ty:ty = $unit:ident($($arg:tt)*), )*
    }) => {
        $($meta)*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $($fmeta)* pub $field: $ty, )*
        }
        impl Default for $name {
            fn default() -> Self {
                #[allow(unused_variables)]
                let lower = <$lower>::default();
                Self { $( $field: tunables!(@default lower $unit($($arg)*)), )* }
            }
        }
    };
    (@default $lower:ident local($default:expr)) => { $default };
    (@default $lower:ident $unit:ident($($path:ident).+)) => {
        $crate::config::tunables::$unit::toml(&$lower.$($path).+)
    };
    (@apply $lower:ident ($value:expr) local($default:expr)) => {};
    (@apply $lower:ident ($value:expr) $unit:ident($($path:ident).+)) => {
        $lower.$($path).+ = $crate::config::tunables::$unit::lower(&$value)
    };
}

/// The same value on both sides.
pub(super) mod same {
    pub fn toml<T: Clone>(value: &T) -> T {
        value.clone()
    }
    pub fn lower<T: Clone>(value: &T) -> T {
        value.clone()
    }
}

/// A [`Duration`] as whole seconds.
pub(super) mod secs {
    use super::Duration;
    pub fn toml(value: &Duration) -> u64 {
        value.as_secs()
    }
    pub fn lower(value: &u64) -> Duration {
        Duration::from_secs(*value)
    }
}

/// A [`Duration`] as whole milliseconds.
pub(super) mod millis {
    use super::Duration;
    pub fn toml(value: &Duration) -> u64 {
        value.as_millis() as u64
    }
    pub fn lower(value: &u64) -> Duration {
        Duration::from_millis(*value)
    }
}

/// Bytes as a string (the bytes of a default that is not UTF-8 are
/// replaced).
pub(super) mod utf8 {
    pub fn toml(value: &[u8]) -> String {
        String::from_utf8_lossy(value).into_owned()
    }
    pub fn lower(value: &str) -> Vec<u8> {
        value.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use crate::config::*;

    fn same(a: &dyn Debug, b: &dyn Debug) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    /// Every section's code default is the embedded default's value.
    #[test]
    fn code_defaults_are_the_embedded_defaults() {
        let c = Config::from_toml(DEFAULT_CONFIG).unwrap();
        same(&c.key_agreement, &KeyAgreementSettings::default());
        same(&c.login, &LoginSettings::default());
        same(&c.ncp, &NcpSettings::default());
        same(&c.etsi014, &Etsi014Settings::default());
        let mut keytalk = c.keytalk.clone();
        keytalk.services.clear();
        same(&keytalk, &KeyTalkSettings::default());
        for node in &c.nodes {
            same(&node.http, &HttpSettings::default());
            same(&node.push, &PushSettings::default());
            same(&node.kms_side, &KmsSideSettings::default());
        }
    }

    /// A section's default applied to its lower type's default changes
    /// nothing: no unit is lost on the way.
    #[test]
    fn defaults_round_trip() {
        fn unchanged<L: Default + Debug>(apply: impl Fn(&mut L)) {
            let mut lower = L::default();
            apply(&mut lower);
            same(&lower, &L::default());
        }
        unchanged(|l| KeyAgreementSettings::default().apply(l));
        unchanged(|l| LoginSettings::default().apply(l));
        unchanged(|l| Etsi014Settings::default().apply(l));
        unchanged(|l| KeyTalkSettings::default().apply(l));
        unchanged(|l| HttpSettings::default().apply(l));
        unchanged(|l| PushSettings::default().apply(l));
    }
}
