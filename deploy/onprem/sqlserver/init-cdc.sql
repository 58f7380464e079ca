-- Source F3 (CRM) on SQL Server 2022: sample database + tables with change data capture on.
-- Run once by the `sqlserver-init` service of docker-compose.yml (sqlcmd -i this file).
-- CDC needs SQL Server Agent running (MSSQL_AGENT_ENABLED=true) for its capture jobs.
-- Idempotent: every step checks before it acts.

IF DB_ID(N'crm') IS NULL
    CREATE DATABASE [crm];
GO

USE [crm];
GO

IF OBJECT_ID(N'[dbo].[accounts]', N'U') IS NULL
    CREATE TABLE [dbo].[accounts] (
        [id]          INT            NOT NULL PRIMARY KEY,
        [name]        NVARCHAR(200)  NOT NULL,
        [segment]     NVARCHAR(50)   NULL,
        [credit_limit] DECIMAL(18, 2) NULL,
        [updated_at]  DATETIME2(6)   NOT NULL DEFAULT SYSUTCDATETIME()
    );
GO

IF OBJECT_ID(N'[dbo].[contacts]', N'U') IS NULL
    CREATE TABLE [dbo].[contacts] (
        [id]          INT            NOT NULL PRIMARY KEY,
        [account_id]  INT            NOT NULL REFERENCES [dbo].[accounts] ([id]),
        [email]       NVARCHAR(320)  NOT NULL,
        [full_name]   NVARCHAR(200)  NULL,
        [is_primary]  BIT            NOT NULL DEFAULT 0
    );
GO

IF NOT EXISTS (SELECT 1 FROM [dbo].[accounts])
    INSERT INTO [dbo].[accounts] ([id], [name], [segment], [credit_limit]) VALUES
        (1, N'Acme GmbH', N'enterprise', 250000.00),
        (2, N'Müller & Söhne', N'smb', 12500.50);
GO

IF NOT EXISTS (SELECT 1 FROM [dbo].[contacts])
    INSERT INTO [dbo].[contacts] ([id], [account_id], [email], [full_name], [is_primary]) VALUES
        (1, 1, N'ops@acme.example', N'Road Runner', 1),
        (2, 2, N'anna@mueller.example', N'Anna Müller', 1);
GO

-- Database-level CDC (creates the cdc schema and the capture/cleanup jobs).
IF (SELECT [is_cdc_enabled] FROM sys.databases WHERE [name] = N'crm') = 0
    EXEC sys.sp_cdc_enable_db;
GO

-- Table-level CDC: one capture instance per table; net changes need the primary key.
IF NOT EXISTS (SELECT 1 FROM cdc.change_tables WHERE [source_object_id] = OBJECT_ID(N'[dbo].[accounts]'))
    EXEC sys.sp_cdc_enable_table
        @source_schema = N'dbo',
        @source_name = N'accounts',
        @role_name = NULL,
        @supports_net_changes = 1;
GO

IF NOT EXISTS (SELECT 1 FROM cdc.change_tables WHERE [source_object_id] = OBJECT_ID(N'[dbo].[contacts]'))
    EXEC sys.sp_cdc_enable_table
        @source_schema = N'dbo',
        @source_name = N'contacts',
        @role_name = NULL,
        @supports_net_changes = 1;
GO
