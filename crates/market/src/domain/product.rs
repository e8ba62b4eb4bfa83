//! An API product: what the catalog lists, who owns it, and who may see it.

use serde::{Deserialize, Serialize};

use super::{DomainError, invalid, slug, text};

/// Who sees a product in the catalog and may subscribe to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Visibility {
    /// Anyone signed in, partners included.
    Public,
    /// The group's own staff only.
    Internal,
    /// Staff, and the members of these partner organisations.
    Partners { organisations: Vec<String> },
}

/// Who is looking: staff of the group, or a member of some organisations.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub staff: bool,
    pub organisations: &'a [String],
}

impl Visibility {
    pub fn admits(&self, viewer: Viewer<'_>) -> bool {
        match self {
            Visibility::Public => true,
            Visibility::Internal => viewer.staff,
            Visibility::Partners { organisations } => {
                viewer.staff
                    || viewer
                        .organisations
                        .iter()
                        .any(|o| organisations.contains(o))
            }
        }
    }
}

/// A product as its publisher writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    /// The product's name in paths (`/market/<slug>/v1/...`) and the catalog's links.
    pub slug: String,
    pub title: String,
    pub description: String,
    /// The team that owns and answers for it.
    pub owner_team: String,
    pub tags: Vec<String>,
    pub visibility: Visibility,
}

impl Product {
    /// The product, checked: a path-safe slug, a title, an owner, at most 20 tags (each a
    /// slug), and partner visibility naming at least one organisation.
    pub fn checked(self) -> Result<Product, DomainError> {
        if self.tags.len() > 20 {
            return Err(invalid("tags", "at most 20"));
        }
        let mut tags = self
            .tags
            .iter()
            .map(|t| slug("tags", t))
            .collect::<Result<Vec<_>, _>>()?;
        tags.sort();
        tags.dedup();
        if let Visibility::Partners { organisations } = &self.visibility
            && organisations.is_empty()
        {
            return Err(invalid(
                "visibility.organisations",
                "partner visibility names at least one organisation",
            ));
        }
        Ok(Product {
            slug: slug("slug", &self.slug)?,
            title: text("title", &self.title, 200)?,
            description: self.description.trim().to_string(),
            owner_team: text("owner_team", &self.owner_team, 100)?,
            tags,
            visibility: self.visibility,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product {
            slug: "vehicle-data".into(),
            title: " Vehicle data ".into(),
            description: "VIN decoding and history".into(),
            owner_team: "platform".into(),
            tags: vec!["vehicles".into(), "vin".into(), "vehicles".into()],
            visibility: Visibility::Public,
        }
    }

    #[test]
    fn a_product_is_checked_and_tidied() {
        let p = product().checked().unwrap();
        assert_eq!(p.title, "Vehicle data");
        assert_eq!(p.tags, ["vehicles", "vin"]);
        let bad = Product {
            slug: "Vehicle Data".into(),
            ..product()
        };
        assert_eq!(
            bad.checked().unwrap_err().to_string(),
            "slug: must be 2 to 64 of a-z, 0-9 and '-', not starting or ending with '-'"
        );
        let nobody = Product {
            visibility: Visibility::Partners {
                organisations: vec![],
            },
            ..product()
        };
        assert!(nobody.checked().is_err());
    }

    #[test]
    fn visibility_admits_staff_and_named_partners() {
        let dealer = ["org-dealer".to_string()];
        let other = ["org-other".to_string()];
        let staff = Viewer {
            staff: true,
            organisations: &[],
        };
        let partner = Viewer {
            staff: false,
            organisations: &dealer,
        };
        let stranger = Viewer {
            staff: false,
            organisations: &other,
        };
        let partners = Visibility::Partners {
            organisations: dealer.to_vec(),
        };
        assert!(Visibility::Public.admits(stranger));
        assert!(Visibility::Internal.admits(staff) && !Visibility::Internal.admits(partner));
        assert!(partners.admits(staff) && partners.admits(partner) && !partners.admits(stranger));
    }

    #[test]
    fn visibility_reads_as_tagged_json() {
        let v: Visibility =
            serde_json::from_str(r#"{"kind": "partners", "organisations": ["o1"]}"#).unwrap();
        assert_eq!(
            v,
            Visibility::Partners {
                organisations: vec!["o1".into()]
            }
        );
    }
}
