-- Logical replication for rtgw: full old rows (so UPDATE carries old_record and a DELETE can be
-- routed by its partition column), and the publication rtgw streams from.

alter table public.customers replica identity full;
alter table public.orders replica identity full;
alter table public.notifications replica identity full;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'rtgw') then
    create publication rtgw for table public.customers, public.orders, public.notifications;
  end if;
end;
$$;
