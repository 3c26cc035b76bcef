//! The list conventions of every collection: `?page=1&pageSize=50` in, and
//! `{"items":[...],"total":N,"page":1,"pageSize":50}` out.

use axum::{extract::FromRequestParts, http::request::Parts};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{error::ApiError, extract::ApiQuery};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

/// A collection's query string: paging and sorting, plus the collection's own filters `F`
/// (a struct with `deny_unknown_fields`, so a misspelt filter is a 400, not ignored).
pub struct ListQuery<F> {
    pub window: PageWindow,
    pub sorting: Sorting,
    pub filter: F,
}

impl<S: Send + Sync, F: DeserializeOwned> FromRequestParts<S> for ListQuery<F> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut page = None;
        let mut page_size = None;
        let mut sorting = Sorting::default();
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "page" => page = Some(parse_number("page", &value)?),
                "pageSize" => page_size = Some(parse_number("pageSize", &value)?),
                "sort" => sorting.sort = Some(value.into_owned()),
                "order" => sorting.order = Some(value.into_owned()),
                _ => {
                    rest.append_pair(&key, &value);
                }
            }
        }
        let window = resolve(page, page_size)?;
        let rest = rest.finish();
        let ApiQuery(filter) = ApiQuery::<F>::parse(&rest)?;
        Ok(ListQuery {
            window,
            sorting,
            filter,
        })
    }
}

fn parse_number(field: &str, value: &str) -> Result<u32, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::field(field, format!("'{value}' is not a positive whole number")))
}

fn resolve(page: Option<u32>, size: Option<u32>) -> Result<PageWindow, ApiError> {
    let page = page.unwrap_or(1);
    let size = size.unwrap_or(DEFAULT_PAGE_SIZE);
    if page == 0 {
        return Err(ApiError::field("page", "pages start at 1"));
    }
    if size == 0 || size > MAX_PAGE_SIZE {
        return Err(ApiError::field(
            "pageSize",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(PageWindow { page, size })
}

#[derive(Debug, Clone, Copy)]
pub struct PageWindow {
    pub page: u32,
    pub size: u32,
}

impl PageWindow {
    pub fn limit(&self) -> i64 {
        i64::from(self.size)
    }
    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.size)
    }
    pub fn wrap<T: Serialize>(self, items: Vec<T>, total: i64) -> Page<T> {
        Page {
            items,
            total,
            page: self.page,
            page_size: self.size,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T: Serialize> {
    pub items: Vec<T>,
    pub total: i64,
    pub page: u32,
    pub page_size: u32,
}

/// A `LIKE` pattern matching values that contain `text` (trimmed, lowercase); `%`, `_` and
/// `\` in it are searched for as themselves (`\` is LIKE's escape character).
pub fn contains_pattern(text: &str) -> String {
    let escaped = text
        .trim()
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// `sort=field&order=asc|desc`, checked against the columns a collection allows.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Sorting {
    pub sort: Option<String>,
    pub order: Option<String>,
}

impl Sorting {
    /// The SQL `ORDER BY` for this request. `allowed` maps API names to column names, so
    /// only fixed strings ever reach the SQL.
    pub fn order_by(
        &self,
        allowed: &[(&str, &'static str)],
        default: &'static str,
    ) -> Result<String, ApiError> {
        let column = match &self.sort {
            None => default,
            Some(s) => allowed
                .iter()
                .find(|(name, _)| name == s)
                .map(|(_, col)| *col)
                .ok_or_else(|| {
                    let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                    ApiError::field("sort", format!("use one of {}", names.join(", ")))
                })?,
        };
        let direction = match self.order.as_deref() {
            None | Some("desc") => "DESC",
            Some("asc") => "ASC",
            Some(_) => return Err(ApiError::field("order", "use asc or desc")),
        };
        // The id breaks ties, so pages never overlap.
        Ok(format!("{column} {direction}, id {direction}"))
    }
}

/// Query arguments bound once and shared by a list's count and page queries, so the two
/// can never disagree about the filters: `pg_args![tenant_id, f.status, …]`.
#[macro_export]
macro_rules! pg_args {
    ($($value:expr),* $(,)?) => {{
        use sqlx::Arguments as _;
        #[allow(unused_mut)]
        let mut args = sqlx::postgres::PgArguments::default();
        $(
            args.add($value).map_err(|e| {
                $crate::http::error::ApiError::Internal(anyhow::anyhow!("binding a filter: {e}"))
            })?;
        )*
        args
    }};
}

/// One page of `SELECT {columns} {from_where} ORDER BY {order}`, with its total. `from_where`
/// is fixed SQL (`FROM servers WHERE tenant_id = $1 AND …`) whose `$n` are `args`.
pub async fn fetch_page<T>(
    db: &sqlx::PgPool,
    columns: &str,
    from_where: &str,
    order: &str,
    window: PageWindow,
    args: sqlx::postgres::PgArguments,
) -> Result<Page<T>, ApiError>
where
    T: Serialize + Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    use sqlx::{Arguments, AssertSqlSafe};
    let n = args.len();
    let total: i64 = sqlx::query_scalar_with(
        AssertSqlSafe(format!("SELECT count(*) {from_where}")),
        args.clone(),
    )
    .fetch_one(db)
    .await?;
    let mut paged = args;
    paged
        .add(window.limit())
        .and_then(|()| paged.add(window.offset()))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("binding the page: {e}")))?;
    let items: Vec<T> = sqlx::query_as_with(
        AssertSqlSafe(format!(
            "SELECT {columns} {from_where} ORDER BY {order} LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        )),
        paged,
    )
    .fetch_all(db)
    .await?;
    Ok(window.wrap(items, total))
}
