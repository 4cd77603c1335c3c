//! Who may do what: roles, scopes (secret groups) and the principal a
//! request authenticated as. Pure logic, no I/O.
//!
//! A scope is a path prefix of whole segments (`tfy-secret/acme/prod`);
//! `tfy-secret` alone is everything. Roles follow TrueFoundry's secret-group
//! model: a viewer sees keys and metadata, an editor also reads values, writes
//! new versions of existing secrets and deletes, an admin also creates
//! secrets and manages tokens in its scope.

use std::fmt;
use std::str::FromStr;

use crate::path::{PathArg, PathError, ROOT, SecretPath};

/// What a token may do (see docs/access.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            _ => Err("role must be viewer, editor or admin".into()),
        }
    }
}

/// A validated scope prefix, canonical (no leading or trailing slash).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub fn root() -> Self {
        Scope(ROOT.to_owned())
    }

    /// Parses a scope as written by an operator: the root or any path.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        Ok(match PathArg::parse(raw)? {
            PathArg::Root => Scope::root(),
            PathArg::Secret(p) => Scope(p.as_str().to_owned()),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` (canonical) is this prefix or below it, by whole
    /// segments: `tfy-secret/acme` covers `tfy-secret/acme/x`, never
    /// `tfy-secret/acme-evil/x`.
    pub fn covers(&self, path: &str) -> bool {
        path == self.0
            || (path.len() > self.0.len()
                && path.starts_with(self.0.as_str())
                && path.as_bytes()[self.0.len()] == b'/')
    }

    /// Whether every path `other` covers is also covered by this scope.
    pub fn contains(&self, other: &Scope) -> bool {
        self.covers(&other.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List keys, read metadata, the root validation call.
    See,
    /// Read a value.
    ReadValue,
    /// Write a new version of a secret that has a live version.
    WriteExisting,
    /// Create a secret (or write one with no live version).
    Create,
    Delete,
    /// Create, list or revoke tokens.
    ManageTokens,
}

impl Action {
    fn min_role(self) -> Role {
        match self {
            Action::See => Role::Viewer,
            Action::ReadValue | Action::WriteExisting | Action::Delete => Role::Editor,
            Action::Create | Action::ManageTokens => Role::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Action::See => "list or inspect secrets",
            Action::ReadValue => "read secret values",
            Action::WriteExisting => "write new versions of secrets",
            Action::Create => "create new secrets",
            Action::Delete => "delete secrets",
            Action::ManageTokens => "manage tokens",
        }
    }
}

/// Why a request was refused (a 403). Names what was missing; never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("role {have} may not {action}; it needs role {need}")]
    Role {
        have: Role,
        need: Role,
        action: &'static str,
    },
    #[error("the path is outside this token's scope")]
    Scope,
    #[error("this token has no scope and grants nothing")]
    NoScope,
}

/// The identity a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token id, or the static key's id (`static-1`, `generated`).
    pub id: String,
    /// Token name (the id again for static keys).
    pub name: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
    /// When the credential expires (ms since the epoch); `None` never.
    pub expires_at: Option<i64>,
}

impl Principal {
    /// A static API key: admin of everything.
    pub fn static_key(id: &str) -> Self {
        Principal {
            id: id.to_owned(),
            name: id.to_owned(),
            role: Role::Admin,
            scopes: vec![Scope::root()],
            expires_at: None,
        }
    }

    /// Whether this principal's scope includes the root (sees everything).
    pub fn is_global(&self) -> bool {
        self.scopes.iter().any(|s| *s == Scope::root())
    }

    /// Whether `action` on `path` (canonical text) is allowed.
    pub fn check(&self, action: Action, path: &str) -> Result<(), Denied> {
        self.check_role(action)?;
        self.check_scope(path)
    }

    pub fn check_role(&self, action: Action) -> Result<(), Denied> {
        let need = action.min_role();
        if self.role < need {
            return Err(Denied::Role {
                have: self.role,
                need,
                action: action.describe(),
            });
        }
        Ok(())
    }

    pub fn check_scope(&self, path: &str) -> Result<(), Denied> {
        if self.scopes.is_empty() {
            return Err(Denied::NoScope);
        }
        if self.scopes.iter().any(|s| s.covers(path)) {
            Ok(())
        } else {
            Err(Denied::Scope)
        }
    }

    /// Whether this principal's scopes cover all of `scope`.
    pub fn covers_scope(&self, scope: &Scope) -> bool {
        self.scopes.iter().any(|s| s.contains(scope))
    }

    /// Convenience for a secret path.
    pub fn check_secret(&self, action: Action, path: &SecretPath) -> Result<(), Denied> {
        self.check(action, path.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token(role: Role, scopes: &[&str]) -> Principal {
        Principal {
            id: "t".into(),
            name: "t".into(),
            role,
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            expires_at: None,
        }
    }

    #[test]
    fn scopes_match_whole_segments() {
        let s = Scope::parse("tfy-secret/acme").unwrap();
        assert!(s.covers("tfy-secret/acme"));
        assert!(s.covers("tfy-secret/acme/x"));
        assert!(s.covers("tfy-secret/acme/x/y"));
        assert!(!s.covers("tfy-secret/acme-evil/x"));
        assert!(!s.covers("tfy-secret/acmex"));
        assert!(!s.covers("tfy-secret/acm"));
        assert!(!s.covers("tfy-secret"));
        let root = Scope::parse("/tfy-secret/").unwrap();
        assert!(root.covers("tfy-secret/anything/at/all"));
        assert!(root.contains(&s));
        assert!(!s.contains(&root));
        assert!(Scope::parse("other").is_err());
    }

    #[test]
    fn role_matrix() {
        use Action::*;
        let cases = [
            (Role::Viewer, [true, false, false, false, false, false]),
            (Role::Editor, [true, true, true, false, true, false]),
            (Role::Admin, [true, true, true, true, true, true]),
        ];
        let actions = [See, ReadValue, WriteExisting, Create, Delete, ManageTokens];
        for (role, allowed) in cases {
            let p = token(role, &["tfy-secret/acme"]);
            for (a, ok) in actions.iter().zip(allowed) {
                assert_eq!(
                    p.check(*a, "tfy-secret/acme/db").is_ok(),
                    ok,
                    "{role} {a:?}"
                );
                assert!(
                    p.check(*a, "tfy-secret/other/db").is_err(),
                    "{role} {a:?} out of scope"
                );
            }
        }
        let none = token(Role::Admin, &[]);
        assert_eq!(
            none.check(Action::See, "tfy-secret/a"),
            Err(Denied::NoScope)
        );
    }
}
