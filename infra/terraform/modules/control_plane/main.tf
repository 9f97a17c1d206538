# The Hodei API: stateless replicas in an Auto Scaling group behind an Application Load
# Balancer that terminates TLS. Replicas read their configuration and secrets from SSM
# Parameter Store at boot; the user data carries no secret.

data "aws_region" "current" {}

data "aws_ssm_parameter" "al2023" {
  count = var.image_id == null ? 1 : 0

  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  image_id = var.image_id != null ? var.image_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)
  api_url  = "https://${var.domain_name}"

  tags = merge(var.tags, {
    "hodei:deployment" = var.name
  })

  # What each replica reads at boot: the configuration file and the secrets, each a
  # SecureString under ssm_parameter_path.
  parameters = {
    "config"                    = var.config_yaml
    "database-url"              = var.database_url
    "worker-registration-token" = var.worker_registration_token
    "bootstrap-admin-key"       = var.bootstrap_admin_key
  }

  # A change of configuration or of a secret changes the user data (by this digest
  # only), so the launch template gets a new version and the replicas are replaced by a
  # rolling instance refresh.
  settings_sha256 = nonsensitive(sha256(jsonencode([
    var.config_yaml,
    var.database_url,
    var.worker_registration_token,
    var.bootstrap_admin_key,
  ])))

  # The unit is the one in infra/systemd of this repository.
  hodei_unit = file("${path.module}/../../../systemd/hodei.service")
}

resource "aws_ssm_parameter" "this" {
  # The names are spelled out: keys of a map holding sensitive values cannot drive for_each.
  for_each = toset(["config", "database-url", "worker-registration-token", "bootstrap-admin-key"])

  name        = "${var.ssm_parameter_path}/${each.key}"
  description = "Hodei ${var.name} control plane: ${each.key}"
  type        = "SecureString"
  tier        = "Standard"
  key_id      = var.kms_key_arn
  value       = local.parameters[each.key]
  tags        = local.tags
}

# Load balancer: HTTPS from the clients and the workers, HTTP only to redirect.
resource "aws_security_group" "alb" {
  name        = "${var.name}-api-alb"
  description = "Hodei ${var.name} API load balancer: HTTPS in, the replicas out"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.ingress_cidr_blocks)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS to the Hodei API"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260: port 80 only answers a 301 to HTTPS (aws_lb_listener.http), so clients that type http:// are sent to TLS; nothing is served over HTTP
  for_each = toset(var.ingress_cidr_blocks)

  security_group_id = aws_security_group.alb.id
  description       = "HTTP, answered with a redirect to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_replicas" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the Hodei API replicas"
  referenced_security_group_id = aws_security_group.replicas.id
  ip_protocol                  = "tcp"
  from_port                    = var.listen_port
  to_port                      = var.listen_port
  tags                         = local.tags
}

# Replicas: the API port from the load balancer only; out, PostgreSQL and HTTPS (SSM,
# the EC2 and Auto Scaling APIs, the hodei download).
resource "aws_security_group" "replicas" {
  name        = "${var.name}-api"
  description = "Hodei ${var.name} API replicas: from the load balancer; to the database and HTTPS"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "replicas_from_alb" {
  security_group_id            = aws_security_group.replicas.id
  description                  = "The API port from the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = var.listen_port
  to_port                      = var.listen_port
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "replicas_to_database" {
  security_group_id            = aws_security_group.replicas.id
  description                  = "PostgreSQL"
  referenced_security_group_id = var.database_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "replicas_https" {
  security_group_id = aws_security_group.replicas.id
  description       = "HTTPS to SSM, the EC2 and Auto Scaling APIs and the hodei download"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28: a WAF web ACL is the operator's choice of rules and cost; every API route but /healthz, /readyz, /metrics and the OpenAPI document requires a bearer key
  name                       = "${var.name}-api"
  internal                   = var.internal
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.public_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = var.load_balancer_deletion_protection

  # Workers long-poll for assignments and follow logs: an idle connection must outlive
  # the longest poll.
  idle_timeout = 120

  access_logs {
    bucket  = var.access_logs_bucket != null ? var.access_logs_bucket : ""
    prefix  = var.name
    enabled = var.access_logs_bucket != null
  }

  tags = local.tags
}

resource "aws_lb_target_group" "this" {
  name                 = "${var.name}-api"
  port                 = var.listen_port
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = 60

  # /readyz answers 200 only when the replica reaches its database: a replica that
  # cannot is taken out of rotation (and, being unhealthy for the group too, replaced).
  health_check {
    path                = "/readyz"
    matcher             = "200"
    protocol            = "HTTP"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = local.tags
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }

  tags = local.tags
}

resource "aws_route53_record" "api" {
  count = var.route53_zone_id != null ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.this.dns_name
    zone_id                = aws_lb.this.zone_id
    evaluate_target_health = true
  }
}

resource "aws_launch_template" "this" {
  name                   = "${var.name}-api"
  description            = "Hodei ${var.name} API replicas"
  image_id               = local.image_id
  instance_type          = var.instance_type
  update_default_version = true
  ebs_optimized          = true
  vpc_security_group_ids = [aws_security_group.replicas.id]

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    region             = data.aws_region.current.name
    parameter_path     = var.ssm_parameter_path
    hodei_download_url = var.hodei_download_url
    hodei_sha256       = var.hodei_sha256
    hodei_unit_base64  = base64encode(local.hodei_unit)
    settings_sha256    = local.settings_sha256
  }))

  iam_instance_profile {
    name = var.instance_profile_name
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-api" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "this" {
  name                      = "${var.name}-api"
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.desired_capacity
  vpc_zone_identifier       = var.private_subnet_ids
  target_group_arns         = [aws_lb_target_group.this.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 180

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A new launch template version (a new hodei, new settings) replaces the replicas a
  # few at a time. Replicas are stateless and apply pending migrations at start, so old
  # and new run side by side while it rolls. max_healthy_percentage 100 keeps the count
  # at or below max_size, which the database's max_connections is sized for.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = var.instance_refresh_min_healthy_percentage
      max_healthy_percentage = 100
      instance_warmup        = 120
      auto_rollback          = true
    }
  }

  tag {
    key                 = "hodei:deployment"
    value               = var.name
    propagate_at_launch = true
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-api"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  depends_on = [aws_ssm_parameter.this]
}
