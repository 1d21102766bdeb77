-- Roles from the database for rtgw's [roles] (channels/roles.toml): one row per (user, role).
-- A role grants the scopes [roles.scopes] lists on top of the token's; rtgw reads a user's
-- roles once, then follows this table in its stream, so a revocation ends the user's
-- subscriptions that need it at once. Row-level security is on: only the gateway (which reads
-- it as its database user) and, on Supabase, each user for their own rows see it. Safe to run
-- twice.

create table if not exists public.user_roles (
  user_id uuid not null,
  role text not null,
  primary key (user_id, role)
);

alter table public.user_roles enable row level security;

do $$
begin
  if exists (select 1 from pg_publication where pubname = 'rtgw')
     and not exists (select 1 from pg_publication_tables
                     where pubname = 'rtgw' and schemaname = 'public'
                       and tablename = 'user_roles') then
    alter publication rtgw add table public.user_roles;
  end if;
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (select 1 from pg_publication_tables
                     where pubname = 'supabase_realtime' and schemaname = 'public'
                       and tablename = 'user_roles') then
    alter publication supabase_realtime add table public.user_roles;
  end if;
  if exists (select 1 from pg_roles where rolname = 'authenticated')
     and to_regprocedure('auth.uid()') is not null
     and not exists (select 1 from pg_policies
                     where schemaname = 'public' and tablename = 'user_roles'
                       and policyname = 'own roles') then
    execute $p$create policy "own roles" on public.user_roles
      for select to authenticated using (user_id = auth.uid())$p$;
  end if;
end;
$$;
