//! The vehicle lifecycle: one transition function over (state, command).
//!
//! Commands that the auction settlement retries (reserve, mark sold, release, deliver,
//! withdraw) are idempotent: repeating one that already took effect returns
//! [`Outcome::Unchanged`] instead of an error, so a saga can retry without special cases.

use axle_vehicle_api::{InspectionReport, Pricing, Sale, VehicleState, types};
use chrono::{DateTime, Utc};

use super::{
    AttributeChanges, DomainError, Vehicle, check_pricing, check_report, mileage, optional_text,
    photos, text,
};

/// Something a caller asks of a vehicle.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    StartInspection,
    CompleteInspection(InspectionReport),
    Price(Pricing),
    List,
    /// Reserve a listed vehicle for an auction.
    Reserve {
        auction_id: String,
    },
    MarkSold(Sale),
    /// The compensation of `MarkSold`: back to listed, sale and reservation cleared.
    Release {
        sale_id: String,
    },
    Deliver,
    Withdraw,
    Update(AttributeChanges),
}

impl Command {
    fn action(&self) -> &'static str {
        match self {
            Command::StartInspection => "start inspecting",
            Command::CompleteInspection(_) => "complete an inspection of",
            Command::Price(_) => "price",
            Command::List => "list",
            Command::Reserve { .. } => "reserve",
            Command::MarkSold(_) => "mark sold",
            Command::Release { .. } => "release",
            Command::Deliver => "deliver",
            Command::Withdraw => "withdraw",
            Command::Update(_) => "update",
        }
    }
}

/// The result of a command that was allowed.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // returned once per command, never stored in bulk
pub enum Outcome {
    /// The vehicle changed; publish `event_type`.
    Changed {
        vehicle: Vehicle,
        event_type: &'static str,
    },
    /// The command had already taken effect; nothing to store or publish.
    Unchanged,
}

impl Vehicle {
    /// Applies `command` at `now`: the next vehicle and its event, `Unchanged` for a repeated
    /// idempotent command, or why it is not allowed.
    pub fn apply(&self, command: Command, now: DateTime<Utc>) -> Result<Outcome, DomainError> {
        use VehicleState::*;
        let current = &self.0;
        let mut next = current.clone();
        let illegal = |command: &Command| DomainError::IllegalTransition {
            from: current.state.as_str(),
            action: command.action(),
        };
        let event_type = match (current.state, command) {
            (Received, Command::StartInspection) => {
                next.state = Inspecting;
                types::INSPECTION_STARTED
            }
            (Inspecting, Command::CompleteInspection(report)) => {
                check_report(&report)?;
                next.state = Inspected;
                next.inspection = Some(report);
                types::INSPECTION_COMPLETED
            }
            (Inspected | Priced, Command::Price(pricing)) => {
                check_pricing(&pricing)?;
                if current.state == Priced && current.pricing.as_ref() == Some(&pricing) {
                    return Ok(Outcome::Unchanged);
                }
                next.state = Priced;
                next.pricing = Some(pricing);
                types::PRICED
            }
            (Priced, Command::List) => {
                next.state = Listed;
                types::LISTED
            }
            (Listed, Command::Reserve { auction_id }) => match &current.reserved_for {
                Some(held) if *held == auction_id => return Ok(Outcome::Unchanged),
                Some(held) => return Err(DomainError::Reserved(held.clone())),
                None => {
                    next.reserved_for = Some(text("auction_id", &auction_id, 100)?);
                    types::RESERVED
                }
            },
            (Listed, Command::MarkSold(sale)) => {
                text("sale_id", &sale.sale_id, 100)?;
                super::positive("price", &sale.price)?;
                next.state = Sold;
                next.sale = Some(sale);
                types::SOLD
            }
            (Sold | Delivered, Command::MarkSold(sale)) => match &current.sale {
                Some(done) if done.sale_id == sale.sale_id => return Ok(Outcome::Unchanged),
                Some(done) => return Err(DomainError::AlreadySold(done.sale_id.clone())),
                None => return Err(illegal(&Command::MarkSold(sale))),
            },
            (Sold, Command::Release { sale_id }) => match &current.sale {
                Some(done) if done.sale_id == sale_id => {
                    next.state = Listed;
                    next.sale = None;
                    next.reserved_for = None;
                    types::RELEASED
                }
                Some(done) => return Err(DomainError::AlreadySold(done.sale_id.clone())),
                None => return Err(illegal(&Command::Release { sale_id })),
            },
            // Releasing a sale that never happened (or was already released) is a no-op, so a
            // compensation can run whether or not the step it undoes took effect.
            (
                Received | Inspecting | Inspected | Priced | Listed | Withdrawn,
                Command::Release { .. },
            ) => {
                return Ok(Outcome::Unchanged);
            }
            (Sold, Command::Deliver) => {
                next.state = Delivered;
                types::DELIVERED
            }
            (Delivered, Command::Deliver) | (Withdrawn, Command::Withdraw) => {
                return Ok(Outcome::Unchanged);
            }
            (Received | Inspecting | Inspected | Priced | Listed, Command::Withdraw) => {
                next.state = Withdrawn;
                next.reserved_for = None;
                types::WITHDRAWN
            }
            (
                Received | Inspecting | Inspected | Priced | Listed | Sold,
                Command::Update(changes),
            ) => {
                // Absent fields stay; present ones are validated like at registration.
                let set = |field, value: Option<String>, slot: &mut Option<String>| {
                    if value.is_some() {
                        *slot = optional_text(field, value)?;
                    }
                    Ok::<_, DomainError>(())
                };
                set("trim", changes.trim, &mut next.trim)?;
                set("colour", changes.colour, &mut next.colour)?;
                set("location", changes.location, &mut next.location)?;
                set("seller_org", changes.seller_org, &mut next.seller_org)?;
                if let Some(v) = changes.mileage_km {
                    next.mileage_km = mileage(v)?;
                }
                if let Some(v) = changes.photos {
                    next.photos = photos(v)?;
                }
                if next == *current {
                    return Ok(Outcome::Unchanged);
                }
                types::UPDATED
            }
            (_, command) => return Err(illegal(&command)),
        };
        next.version += 1;
        next.updated_at = now;
        Ok(Outcome::Changed {
            vehicle: Vehicle(next),
            event_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::new;
    use axle_core::money::{Currency, Money};
    use axle_vehicle_api::{Grade, InspectionItem, ItemResult};
    use uuid::Uuid;

    fn report() -> InspectionReport {
        InspectionReport {
            inspector: "inspector-7".into(),
            grade: Grade::B,
            items: vec![InspectionItem {
                name: "engine".into(),
                result: ItemResult::Ok,
                note: None,
            }],
            defects: vec!["scratch, rear bumper".into()],
            completed_at: Utc::now(),
        }
    }

    fn pricing() -> Pricing {
        Pricing {
            guide_price: Money::major(80_000, Currency::CNY).unwrap(),
            reserve_suggestion: Money::major(70_000, Currency::CNY).unwrap(),
        }
    }

    fn sale(id: &str) -> Sale {
        Sale {
            sale_id: id.into(),
            price: Money::major(75_000, Currency::CNY).unwrap(),
        }
    }

    fn commands() -> Vec<Command> {
        vec![
            Command::StartInspection,
            Command::CompleteInspection(report()),
            Command::Price(pricing()),
            Command::List,
            Command::Reserve {
                auction_id: "auction-1".into(),
            },
            Command::MarkSold(sale("lot-1")),
            Command::Release {
                sale_id: "lot-1".into(),
            },
            Command::Deliver,
            Command::Withdraw,
            Command::Update(AttributeChanges {
                location: Some("Shanghai".into()),
                ..Default::default()
            }),
        ]
    }

    /// Drives a new vehicle to `state` along the happy path.
    fn vehicle_in(state: VehicleState) -> Vehicle {
        let mut v =
            Vehicle::receive(new("1HGCM82633A004352", 2003), Uuid::nil(), Utc::now()).unwrap();
        let path = match state {
            VehicleState::Received => vec![],
            VehicleState::Inspecting => vec![Command::StartInspection],
            VehicleState::Inspected => vec![
                Command::StartInspection,
                Command::CompleteInspection(report()),
            ],
            VehicleState::Priced => vec![
                Command::StartInspection,
                Command::CompleteInspection(report()),
                Command::Price(pricing()),
            ],
            VehicleState::Listed => vec![
                Command::StartInspection,
                Command::CompleteInspection(report()),
                Command::Price(pricing()),
                Command::List,
            ],
            VehicleState::Sold => vec![
                Command::StartInspection,
                Command::CompleteInspection(report()),
                Command::Price(pricing()),
                Command::List,
                Command::MarkSold(sale("lot-1")),
            ],
            VehicleState::Delivered => vec![
                Command::StartInspection,
                Command::CompleteInspection(report()),
                Command::Price(pricing()),
                Command::List,
                Command::MarkSold(sale("lot-1")),
                Command::Deliver,
            ],
            VehicleState::Withdrawn => vec![Command::Withdraw],
        };
        for command in path {
            match v.apply(command, Utc::now()).unwrap() {
                Outcome::Changed { vehicle, .. } => v = vehicle,
                Outcome::Unchanged => panic!("happy path step changed nothing"),
            }
        }
        assert_eq!(v.state(), state);
        v
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        To(VehicleState),
        Same,
        Refused,
    }

    /// The whole state × command table, written out so a change to the rules is a visible
    /// change to this test.
    #[test]
    fn every_state_and_command() {
        use Expect::*;
        use VehicleState::*;
        let table: [(VehicleState, [Expect; 10]); 8] = [
            //           start       complete     price      list       reserve    sold      release  deliver    withdraw       update
            (
                Received,
                [
                    To(Inspecting),
                    Refused,
                    Refused,
                    Refused,
                    Refused,
                    Refused,
                    Same,
                    Refused,
                    To(Withdrawn),
                    To(Received),
                ],
            ),
            (
                Inspecting,
                [
                    Refused,
                    To(Inspected),
                    Refused,
                    Refused,
                    Refused,
                    Refused,
                    Same,
                    Refused,
                    To(Withdrawn),
                    To(Inspecting),
                ],
            ),
            (
                Inspected,
                [
                    Refused,
                    Refused,
                    To(Priced),
                    Refused,
                    Refused,
                    Refused,
                    Same,
                    Refused,
                    To(Withdrawn),
                    To(Inspected),
                ],
            ),
            (
                Priced,
                [
                    Refused,
                    Refused,
                    Same,
                    To(Listed),
                    Refused,
                    Refused,
                    Same,
                    Refused,
                    To(Withdrawn),
                    To(Priced),
                ],
            ),
            (
                Listed,
                [
                    Refused,
                    Refused,
                    Refused,
                    Refused,
                    To(Listed),
                    To(Sold),
                    Same,
                    Refused,
                    To(Withdrawn),
                    To(Listed),
                ],
            ),
            (
                Sold,
                [
                    Refused,
                    Refused,
                    Refused,
                    Refused,
                    Refused,
                    Same,
                    To(Listed),
                    To(Delivered),
                    Refused,
                    To(Sold),
                ],
            ),
            (
                Delivered,
                [
                    Refused, Refused, Refused, Refused, Refused, Same, Refused, Same, Refused,
                    Refused,
                ],
            ),
            (
                Withdrawn,
                [
                    Refused, Refused, Refused, Refused, Refused, Refused, Same, Refused, Same,
                    Refused,
                ],
            ),
        ];
        for (state, expected) in table {
            let vehicle = vehicle_in(state);
            for (command, expect) in commands().into_iter().zip(expected) {
                let got = match vehicle.apply(command.clone(), Utc::now()) {
                    Ok(Outcome::Changed {
                        vehicle: next,
                        event_type,
                    }) => {
                        assert_eq!(next.version(), vehicle.version() + 1);
                        assert!(event_type.starts_with("axle.vehicle."));
                        To(next.state())
                    }
                    Ok(Outcome::Unchanged) => Same,
                    Err(_) => Refused,
                };
                assert_eq!(got, expect, "{state:?} + {command:?}");
            }
        }
    }

    #[test]
    fn settlement_steps_are_idempotent_and_guarded() {
        let listed = vehicle_in(VehicleState::Listed);
        let Outcome::Changed {
            vehicle: reserved, ..
        } = listed
            .apply(
                Command::Reserve {
                    auction_id: "a-1".into(),
                },
                Utc::now(),
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            reserved.apply(
                Command::Reserve {
                    auction_id: "a-1".into()
                },
                Utc::now()
            ),
            Ok(Outcome::Unchanged)
        );
        assert_eq!(
            reserved.apply(
                Command::Reserve {
                    auction_id: "a-2".into()
                },
                Utc::now()
            ),
            Err(DomainError::Reserved("a-1".into()))
        );
        let sold = vehicle_in(VehicleState::Sold);
        assert_eq!(
            sold.apply(Command::MarkSold(sale("lot-2")), Utc::now()),
            Err(DomainError::AlreadySold("lot-1".into()))
        );
        assert_eq!(
            sold.apply(
                Command::Release {
                    sale_id: "lot-2".into()
                },
                Utc::now()
            ),
            Err(DomainError::AlreadySold("lot-1".into()))
        );
        let Outcome::Changed {
            vehicle: released,
            event_type,
        } = sold
            .apply(
                Command::Release {
                    sale_id: "lot-1".into(),
                },
                Utc::now(),
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(event_type, types::RELEASED);
        assert_eq!(
            (released.state(), released.view().sale.clone()),
            (VehicleState::Listed, None)
        );
    }

    #[test]
    fn bad_reports_and_prices_are_refused() {
        let inspecting = vehicle_in(VehicleState::Inspecting);
        let mut empty = report();
        empty.items.clear();
        assert!(matches!(
            inspecting.apply(Command::CompleteInspection(empty), Utc::now()),
            Err(DomainError::Invalid { field: "items", .. })
        ));
        let inspected = vehicle_in(VehicleState::Inspected);
        let mut upside_down = pricing();
        upside_down.reserve_suggestion = Money::major(90_000, Currency::CNY).unwrap();
        assert!(matches!(
            inspected.apply(Command::Price(upside_down), Utc::now()),
            Err(DomainError::Invalid {
                field: "reserve_suggestion",
                ..
            })
        ));
    }
}
