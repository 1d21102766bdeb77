-- rtgw demo schema: customers, orders (a live dashboard) and per-user notifications.
-- Applies on a plain Postgres 15+ and on a Supabase project; safe to run twice.

create table if not exists public.customers (
  id bigint generated always as identity primary key,
  name text not null,
  tier text not null default 'standard'
);

create table if not exists public.orders (
  id bigint generated always as identity primary key,
  customer_id bigint not null references public.customers (id) on delete cascade,
  status text not null default 'pending',
  total numeric(12, 2) not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index if not exists orders_customer_id_idx on public.orders (customer_id);

create table if not exists public.notifications (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  title text not null,
  body text not null default '',
  read boolean not null default false,
  created_at timestamptz not null default now()
);

create index if not exists notifications_user_id_idx on public.notifications (user_id);

create or replace function public.touch_updated_at() returns trigger
language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end;
$$;

drop trigger if exists orders_touch_updated_at on public.orders;
create trigger orders_touch_updated_at before update on public.orders
  for each row execute function public.touch_updated_at();
