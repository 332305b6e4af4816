//! What the `impl Passdb` blocks of the backends share.

/// The [`Passdb::name`](super::Passdb::name) and
/// [`Passdb::capabilities`](super::Passdb::capabilities) methods of a backend
/// whose name and capabilities are the same for every instance, e.g.
/// `fixed_identity!("sqlite", BOTH);` inside its `impl Passdb`, where `BOTH`
/// names a [`Capabilities`](super::Capabilities) constant. (LDAP, whose
/// capabilities depend on its mode, writes its own.)
macro_rules! fixed_identity {
    ($name:literal, $capabilities:ident) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn capabilities(&self) -> $crate::passdb::Capabilities {
            $crate::passdb::Capabilities::$capabilities
        }
    };
}
pub(crate) use fixed_identity;
