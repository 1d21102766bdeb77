-- Row level security for Supabase projects (PostgREST and supabase-js reads). rtgw itself
-- authorizes from JWT claims via channels/*.toml; these policies keep the tables consistent
-- with that when clients also read them directly. Skipped on a plain Postgres, which has no
-- `authenticated` role and no auth.uid(). Scopes match as rtgw matches them: whole words of the
-- `scope` claim (a space-separated string or a list), or entries of `app_metadata.scopes`.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'authenticated')
     or to_regprocedure('auth.uid()') is null then
    raise notice 'not a Supabase database: skipping RLS policies';
    return;
  end if;

  create or replace function public.rtgw_has_scope(wanted text) returns boolean
  language sql stable as $f$
    select coalesce(
      wanted = any(string_to_array(auth.jwt() ->> 'scope', ' '))
      or (jsonb_typeof(auth.jwt() -> 'scope') = 'array' and auth.jwt() -> 'scope' ? wanted)
      or (jsonb_typeof(auth.jwt() -> 'app_metadata' -> 'scopes') = 'array'
          and auth.jwt() -> 'app_metadata' -> 'scopes' ? wanted),
      false)
  $f$;

  alter table public.notifications enable row level security;
  alter table public.orders enable row level security;
  alter table public.customers enable row level security;

  if not exists (select 1 from pg_policies
                 where schemaname = 'public' and tablename = 'notifications'
                   and policyname = 'own notifications') then
    execute $p$create policy "own notifications" on public.notifications
      for select to authenticated using (user_id = auth.uid())$p$;
  end if;
  if not exists (select 1 from pg_policies
                 where schemaname = 'public' and tablename = 'orders'
                   and policyname = 'orders readable with orders:read') then
    execute $p$create policy "orders readable with orders:read" on public.orders
      for select to authenticated
      using (public.rtgw_has_scope('orders:read'))$p$;
  end if;
  if not exists (select 1 from pg_policies
                 where schemaname = 'public' and tablename = 'customers'
                   and policyname = 'customers readable with orders:read') then
    execute $p$create policy "customers readable with orders:read" on public.customers
      for select to authenticated
      using (public.rtgw_has_scope('orders:read'))$p$;
  end if;
end;
$$;
