-- Prices that change while an instance runs: a spot instance is priced at the spot market's
-- price observed at launch (`instances.price_per_hour`, which stays the launch price), and
-- the spot price refresh records every later change here, in force from `effective_from`
-- until the next. The roll-up splits an instance's hour at its changes and prices each
-- part with its own price (`hodei_core::cost::price_segments`); a bucket in which a price
-- changed has a `cost_allocations` row per attempt and part.
create table instance_prices (
    instance_id     bigint      not null references instances (id) on delete cascade,
    effective_from  timestamptz not null,
    -- Null: unpriced from then.
    price_per_hour  numeric     constraint instance_prices_price_not_negative check (price_per_hour >= 0),
    -- Where the price came from: the price list, or the spot market (`DescribeSpotPriceHistory`).
    source          text        not null
        constraint instance_prices_source check (source in ('price_list', 'spot_market')),
    primary key (instance_id, effective_from)
);
