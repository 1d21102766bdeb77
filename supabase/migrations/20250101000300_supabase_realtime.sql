-- For RTGW_SOURCE=supabase: Supabase Realtime streams the tables of its `supabase_realtime`
-- publication, so the demo tables join it. Skipped where that publication does not exist (a
-- plain Postgres, where rtgw reads its own `rtgw` publication instead). Safe to run twice.

do $$
declare
  wanted text;
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    raise notice 'no supabase_realtime publication: skipping';
    return;
  end if;
  foreach wanted in array array['customers', 'orders', 'notifications'] loop
    if not exists (
      select 1 from pg_publication_tables
      where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = wanted
    ) then
      execute format('alter publication supabase_realtime add table public.%I', wanted);
    end if;
  end loop;
end;
$$;
