//! A card's expiry date.

use crate::error::InvalidArgument;

/// A card's expiry: month 1-12 and a four-digit year from 2000 to 2099.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    year: u16,
}

impl Expiry {
    /// Parses an optional expiry given as separate month and year fields: both or neither.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `exp_month` or `exp_year`.
    pub fn parse(month: Option<u32>, year: Option<u32>) -> Result<Option<Self>, InvalidArgument> {
        match (month, year) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(InvalidArgument {
                field: "exp_year",
                problem: "is required when exp_month is given",
            }),
            (None, Some(_)) => Err(InvalidArgument {
                field: "exp_month",
                problem: "is required when exp_year is given",
            }),
            (Some(month), Some(year)) => Self::new(month, year).map(Some),
        }
    }

    /// An expiry from a month and a year.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `exp_month` or `exp_year`.
    pub fn new(month: u32, year: u32) -> Result<Self, InvalidArgument> {
        let month = u8::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(InvalidArgument {
                field: "exp_month",
                problem: "must be a month from one to twelve",
            })?;
        let year = u16::try_from(year)
            .ok()
            .filter(|y| (2000..=2099).contains(y))
            .ok_or(InvalidArgument {
                field: "exp_year",
                problem: "must be a four-digit year in this century",
            })?;
        Ok(Self { month, year })
    }

    /// The month, 1-12.
    #[must_use]
    pub fn month(self) -> u8 {
        self.month
    }

    /// The year, e.g. 2030.
    #[must_use]
    pub fn year(self) -> u16 {
        self.year
    }
}
