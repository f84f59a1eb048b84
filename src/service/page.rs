//! Pagination: the platform's query parameters and envelope, with real totals.
//!
//! The platform computes `total` as `(page-1)*page_size + len(items)`, so a client never learns
//! that a next page exists; runvisor counts the rows that match the same filters (API.md §7).

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QuerySelect, Select};
use serde::Serialize;

use super::check::Checks;

/// The largest page the platform serves.
pub const MAX_PAGE_SIZE: u64 = 100;
pub const DEFAULT_PAGE_SIZE: u64 = 20;

/// `page` (from 1) and `page_size` (1..=100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub page_size: u64,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { page: 1, page_size: DEFAULT_PAGE_SIZE }
    }
}

impl PageRequest {
    /// Reads `page` and `page_size` from a query, reporting out-of-range values.
    pub fn from_query(query: &super::check::Object<'_>, checks: &mut Checks) -> PageRequest {
        // Bounded so that the offset still fits the database's 64-bit integers.
        let page = checks.integer(*query, "page", false, 1, i64::MAX / MAX_PAGE_SIZE as i64).unwrap_or(1) as u64;
        let page_size =
            checks.integer(*query, "page_size", false, 1, MAX_PAGE_SIZE as i64).unwrap_or(DEFAULT_PAGE_SIZE as i64);
        PageRequest { page, page_size: page_size as u64 }
    }

    pub fn offset(&self) -> u64 {
        (self.page - 1).saturating_mul(self.page_size)
    }
}

/// `{"items", "total", "page", "page_size", "total_pages"}`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub page: u64,
    pub page_size: u64,
    pub total_pages: u64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, total: u64, request: PageRequest) -> Self {
        let total_pages = total.div_ceil(request.page_size);
        Page { items, total, page: request.page, page_size: request.page_size, total_pages }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            page: self.page,
            page_size: self.page_size,
            total_pages: self.total_pages,
        }
    }
}

/// One page of `select`, and how many rows match it in all.
pub async fn fetch<E, C>(db: &C, select: Select<E>, request: PageRequest) -> Result<Page<E::Model>, DbErr>
where
    E: EntityTrait,
    E::Model: Sync,
    C: ConnectionTrait,
{
    let total = select.clone().count(db).await?;
    let items = select.offset(request.offset()).limit(request.page_size).all(db).await?;
    Ok(Page::new(items, total, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_counts_and_pages_round_up() {
        let page = Page::new(vec![1, 2], 41, PageRequest { page: 1, page_size: 20 });
        assert_eq!((page.total, page.total_pages), (41, 3));
        let empty: Page<u8> = Page::new(vec![], 0, PageRequest::default());
        assert_eq!(empty.total_pages, 0);
    }
}
