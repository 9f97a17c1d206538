-- What an instance type offers, beside its price (optional): the cost recommendations
-- name a smaller type from the price list only when they know its shape.
alter table prices
    add column cpu_millis integer constraint prices_cpu_millis_positive check (cpu_millis > 0),
    add column memory_mib integer constraint prices_memory_mib_positive check (memory_mib > 0);
