//! Vehicle Identification Numbers (ISO 3779; GB 16735 in China).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VinError {
    #[error("a VIN has 17 characters, got {0}")]
    Length(usize),
    #[error(
        "character {0:?} at position {1} is not allowed in a VIN (letters I, O and Q never are)"
    )]
    Character(char, usize),
    #[error("check digit (position 9) is {found:?} but the other characters give {expected:?}")]
    CheckDigit { found: char, expected: char },
}

/// A valid VIN: 17 characters from 0-9 and A-Z without I, O, Q, with a correct check digit.
/// Lower case input is accepted and upper-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Vin(String);

/// Position weights of the check-digit sum.
const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];

/// The numeric value a VIN character stands for in the check-digit sum.
fn transliterate(c: char) -> Option<u32> {
    Some(match c {
        '0'..='9' => c.to_digit(10)?,
        'A' | 'J' => 1,
        'B' | 'K' | 'S' => 2,
        'C' | 'L' | 'T' => 3,
        'D' | 'M' | 'U' => 4,
        'E' | 'N' | 'V' => 5,
        'F' | 'W' => 6,
        'G' | 'P' | 'X' => 7,
        'H' | 'Y' => 8,
        'R' | 'Z' => 9,
        _ => return None,
    })
}

/// The check digit the other 16 characters call for.
pub fn check_digit(chars: &[char; 17]) -> Option<char> {
    let mut sum = 0;
    for (c, w) in chars.iter().zip(WEIGHTS) {
        sum += transliterate(*c)? * w;
    }
    Some(match sum % 11 {
        10 => 'X',
        n => char::from_digit(n, 10)?,
    })
}

impl Vin {
    pub fn parse(input: &str) -> Result<Self, VinError> {
        let upper = input.trim().to_ascii_uppercase();
        let chars: Vec<char> = upper.chars().collect();
        let chars: [char; 17] = chars
            .try_into()
            .map_err(|c: Vec<char>| VinError::Length(c.len()))?;
        for (i, c) in chars.iter().enumerate() {
            if transliterate(*c).is_none() {
                return Err(VinError::Character(*c, i + 1));
            }
        }
        // Every character transliterates (checked above), so the digit exists.
        let expected = check_digit(&chars).unwrap_or('?');
        if chars[8] != expected {
            return Err(VinError::CheckDigit {
                found: chars[8],
                expected,
            });
        }
        Ok(Vin(upper))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Vin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Vin::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_vins() {
        for vin in [
            "1HGCM82633A004352",
            "11111111111111111",
            "1m8gdm9axkp042788",
        ] {
            assert_eq!(Vin::parse(vin).unwrap().as_str(), vin.to_ascii_uppercase());
        }
    }

    #[test]
    fn rejects_bad_vins() {
        assert_eq!(Vin::parse("1HGCM82633A00435"), Err(VinError::Length(16)));
        assert_eq!(Vin::parse("1HGCM82633A0043521"), Err(VinError::Length(18)));
        assert_eq!(
            Vin::parse("1HGCM8263IA004352"),
            Err(VinError::Character('I', 10))
        );
        assert_eq!(
            Vin::parse("OHGCM82633A004352"),
            Err(VinError::Character('O', 1))
        );
        assert_eq!(
            Vin::parse("1HGCM82633A00435Q"),
            Err(VinError::Character('Q', 17))
        );
        assert_eq!(
            Vin::parse("1HGCM82643A004352"),
            Err(VinError::CheckDigit {
                found: '4',
                expected: '3'
            })
        );
    }

    #[test]
    fn any_single_digit_change_breaks_the_check_digit() {
        let good: Vec<char> = "1HGCM82633A004352".chars().collect();
        for pos in [0usize, 5, 11, 16] {
            let mut bad = good.clone();
            bad[pos] = if bad[pos] == '0' { '1' } else { '0' };
            let s: String = bad.into_iter().collect();
            assert!(Vin::parse(&s).is_err(), "{s}");
        }
    }
}
