//! The roles a gateway token carries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a token may do. Each role may do everything the roles below it may:
///
/// - `reader`: status;
/// - `user`: also ingest, query, rag, embed, generate;
/// - `admin`: also deploy, undeploy, collections, cluster changes.
///
/// The order of the variants is that order, so `role >= Role::User` asks "may this token do
/// what a user may?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    User,
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::User, Role::Admin];

    /// The name used in the file, on the command line and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Whether a token with this role may do what `needed` is required for.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    /// Honours width and alignment (`{:<6}`), for tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A role name that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}: the roles are reader (status), user (also ingest, query, rag, embed, \
     generate) and admin (also deploy, undeploy, collections, cluster changes)"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    /// Case does not matter: `Admin` is `admin`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_with_a_helpful_error() {
        assert!(Role::Admin > Role::User && Role::User > Role::Reader);
        assert!(Role::Admin.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::User));
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        assert_eq!("Admin".parse::<Role>().unwrap(), Role::Admin);
        let e = "root".parse::<Role>().unwrap_err().to_string();
        assert!(
            e.contains("\"root\"") && e.contains("reader") && e.contains("admin"),
            "{e}"
        );
    }
}
